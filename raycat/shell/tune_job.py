"""`raycat tune DATA --out OUT --samples N`: a Ray Tune sweep over the recipe's settings.

Ray 2.60's pattern for Train inside Tune: each trial is a function trainable that runs one
`raycat train` (its own TorchTrainer, with `--workers` Train workers and `--gpu`), and a
TuneReportCallback passes the recipe's per-unit reports to Tune, where ASHA stops bad trials on
valid loss. Each trial writes to OUT/trials/<trial id>/ and nowhere else. The sweep's state lives in
OUT/tune/, so running the same command again resumes it.
"""

from __future__ import annotations

import dataclasses
import json
import math

from raycat.config import Recipe, TuneConfig, to_dict
from raycat.core.recipe import SWEEP_UNLESS_LR, plan, sweeps_for
from raycat.edge import outputs, plots, report, storage
from raycat.edge.layout import scan_layout
from raycat.shell import faults
from raycat.shell.search_space import load_space, n_trials, to_tune

TRIAL_COLUMNS_TAIL = ["valid_loss", "accuracy", "units_done", "status"]
TRIAL_DRIVER_MEMORY = 512 << 20  # bytes: a trial's own process, besides its Train workers
TRIAL_SWEEPS = SWEEP_UNLESS_LR  # a trial with a rate (sampled or fixed) runs no lr_find sweep


def trial_recipe(config: dict) -> Recipe:
    """A trial's recipe: the sweep's own, with the sampled settings in place."""
    return Recipe(**{**config["_recipe"], **{k: v for k, v in config.items() if not k.startswith("_")}})


def trial_fn(config: dict) -> None:
    """One trial: `raycat train` with this trial's settings, reporting every unit to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raycat.shell.train_job import fit
    from raycat.shell.train_outputs import write_train_outputs

    trial_id = ray.tune.get_context().get_trial_id()
    number = trial_id.rpartition("_")[2]
    if number.isdigit():  # inert unless a test set it (raycat/shell/faults.py)
        faults.hold("tune", faults.HOLD_AT_TRIAL, int(number), {"trial_id": trial_id})
    sweep: TuneConfig = config["_sweep"]
    cfg = sweep.trial(trial_recipe(config), storage.join(sweep.out, "trials", trial_id))
    # A trial with a rate (sampled, or the sweep's --lr) skips lr_find: its curves would be unused.
    fitted = fit(cfg, callbacks=[TuneReportCallback()], resumable=False, sweeps=TRIAL_SWEEPS)
    write_train_outputs(cfg, fitted, {"trial_id": trial_id}, lr_find_note=False)


def _keep_credentials_out_of_runtime_envs() -> None:
    """Ray Tune copies AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the session tokens from the driver
    into every trial's runtime env, and Ray's runtime-env agent logs runtime envs in clear text. Trials
    don't need them there: on a local instance they inherit the driver's environment, and cluster nodes
    have their own (instance roles). So raycat takes them off Tune's list."""
    from ray.tune.execution import class_cache

    secret = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"}
    class_cache.ENV_VARS_TO_PROPAGATE = set(class_cache.ENV_VARS_TO_PROPAGATE) - secret


def max_concurrent(cfg: TuneConfig, per_trial_cpus: int, cluster_cpus: float, cluster_gpus: float) -> int:
    """Trials at once: what the cluster can hold (each trial: its Train workers' CPUs; the trial's
    own driver and its read tasks reserve none), capped by --max-concurrent when that is smaller."""
    res = cfg.resources
    fit = int(cluster_cpus // max(1, per_trial_cpus * res.workers.max))
    if res.gpu:
        fit = min(fit, int(cluster_gpus // res.workers.max))
    fit = max(1, fit)
    if cfg.max_concurrent and cfg.max_concurrent > fit:
        print(f"raycat tune: --max-concurrent {cfg.max_concurrent} is more than the cluster holds; using {fit}")
    return min(fit, cfg.max_concurrent) if cfg.max_concurrent else fit


def trial_status(result, recipe: Recipe) -> str:
    if result.error is not None:
        return "error"
    done = (result.metrics or {}).get("units_done", 0)
    return "completed" if done >= len(plan(recipe, TRIAL_SWEEPS)) else "early_stopped"


def space_archs(space: dict, default: str) -> list[str]:
    """Every body the sweep's trials may start from: the space's `arch` values, else the recipe's."""
    spec = space.get("arch", default)
    if isinstance(spec, dict):  # {"grid": [...]} or {"choice": [...]}
        spec = next((v for v in spec.values() if isinstance(v, (list, tuple))), [default])
    return sorted({a for a in (spec if isinstance(spec, (list, tuple)) else [spec]) if isinstance(a, str)})


def run_tune(cfg: TuneConfig) -> int:
    from raycat.shell import tracking

    tracking.require(cfg.tracking)
    layout = scan_layout(cfg.data, cfg.labels, cfg.valid_pct, cfg.recipe.seed)  # errors: exit 2, before Ray
    space = load_space(cfg.space)
    outputs.check_writable(cfg.out)
    from raycat.core.model import create_model
    from raycat.edge import weights

    # The trials' starting weights, checked here as train checks them: offline, `--weights imagenet`
    # for a body without installed weights is exit 2 now, not an error in every trial later.
    for arch in space_archs(space, cfg.recipe.arch):
        weights.starting_model(arch, cfg.recipe.weights, cfg.recipe.stem, layout.classes)

    # Every trial keeps its model and two checkpoints; the best model is copied once more.
    model_bytes = outputs.model_bytes(create_model(cfg.recipe.arch, len(layout.classes)).state_dict())
    outputs.check_space(cfg.out, (4 * n_trials(space, cfg.samples) + 1) * model_bytes + 16 * outputs.MB,
                        "the trials' models and checkpoints")

    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from raycat.shell import ray_session

    ray_session.connect(cfg.resources.address, cfg.resources.verbose, dashboard=True)
    _keep_credentials_out_of_runtime_envs()
    res = ray.cluster_resources()
    cpus = ray_session.worker_cpus(cfg.resources.cpus_per_worker, cfg.resources.workers.max, cfg.resources.gpu,
                                   ray_session.node_cpus())
    concurrent = max_concurrent(cfg, cpus, res.get("CPU", 1), res.get("GPU", 0))
    if cfg.resources.cpus_per_worker == 0 and concurrent > 1:
        # Share the cluster between the trials that run at once, rather than one trial holding it all.
        cpus = max(1, int(res.get("CPU", 1)) // (concurrent * cfg.resources.workers.max))
    sweep = dataclasses.replace(cfg, resources=dataclasses.replace(cfg.resources, cpus_per_worker=cpus))
    param_space = {**to_tune(space), "_recipe": to_dict(cfg.recipe), "_sweep": sweep}
    # The first cut comes after a real epoch: unit 1 is lr_find (no valid loss) unless the trials
    # have a rate (then they sweep nothing).
    swept = sweeps_for(TRIAL_SWEEPS, cfg.recipe.lr is not None or "lr" in space)
    scheduler = ASHAScheduler(metric="valid_loss", mode="min", time_attr="training_iteration",
                              grace_period=2 if swept else 1, max_t=200, reduction_factor=2)
    # The trial function only drives its TorchTrainer: its Train workers hold the CPUs. What it
    # does hold is a process's heap (torch and Ray imported, the trial's bookkeeping).
    trainable = tune.with_resources(trial_fn, {"cpu": 0, "memory": TRIAL_DRIVER_MEMORY})
    tune_uri = storage.join(cfg.out, "tune")
    fs, path = storage.filesystem(cfg.out)
    if storage.exists(storage.join(tune_uri, "tuner.pkl")):
        print(f"raycat tune: resuming the sweep in {tune_uri}")
        restore_at = storage.filesystem(tune_uri)[1] if storage.is_s3(tune_uri) else tune_uri
        tuner = tune.Tuner.restore(restore_at, trainable, resume_unfinished=True, resume_errored=True,
                                   param_space=param_space,
                                   storage_filesystem=fs if storage.is_s3(cfg.out) else None)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(num_samples=cfg.samples, scheduler=scheduler,
                                        max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(name="tune", storage_path=path,
                                      storage_filesystem=fs if storage.is_s3(cfg.out) else None, verbose=1,
                                      callbacks=tracking.tune_callbacks(cfg.tracking)),
        )
    grid = tuner.fit()
    return write_tune_outputs(cfg, grid, space)


def write_tune_outputs(cfg: TuneConfig, grid, space: dict) -> int:
    keys = sorted(space)
    rows = []
    for result in grid:
        config = result.config or {}
        recipe = trial_recipe({"_recipe": to_dict(cfg.recipe), **config})
        values = to_dict(recipe)
        trial_id = result.path.rstrip("/").split("/")[-1] if result.path else "?"
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id", trial_id)
        final_uri = storage.join(cfg.out, "trials", trial_id, "metrics.json")
        row = {k: values.get(k) for k in keys}
        row.update(trial_id=trial_id, valid_loss=metrics.get("valid_loss"), accuracy=metrics.get("accuracy"),
                   units_done=metrics.get("units_done", 0), status=trial_status(result, recipe))
        if row["status"] != "error" and storage.exists(final_uri):
            # The trial wrote its final outputs: it completed, whatever Tune last heard from it (a
            # report can be lost when the sweep's driver dies).
            final = json.loads(storage.read_text(final_uri))
            row.update(valid_loss=final["valid_loss"], accuracy=final["valid_accuracy"], status="completed",
                       units_done=len(plan(recipe, TRIAL_SWEEPS)))
        if isinstance(row["valid_loss"], float) and not math.isfinite(row["valid_loss"]):
            row["valid_loss"] = None
        row["_recipe"] = values
        rows.append(row)
    rows.sort(key=lambda r: r["trial_id"])
    columns = ["trial_id", *keys, *TRIAL_COLUMNS_TAIL]
    outputs.write_dicts(storage.join(cfg.out, "trials.csv"), rows, columns)
    storage.write_bytes(storage.join(cfg.out, "trials.png"), plots.trials_png(rows))
    done = [r for r in rows if r["status"] == "completed" and r["valid_loss"] is not None]
    best = min(done, key=lambda r: r["valid_loss"]) if done else None
    report.write(cfg.out, report.tune_page(rows, "valid_loss", "min", best["_recipe"] if best else {}, keys,
                                           report.metric_plot_png(rows, "valid_loss", keys), out=cfg.out))
    if best is None:
        raise RuntimeError(f"no trial completed ({len(rows)} ran; see {storage.join(cfg.out, 'trials.csv')})")
    outputs.write_json(storage.join(cfg.out, "best_recipe.json"), best["_recipe"])
    src = storage.join(cfg.out, "trials", best["trial_id"], "model")
    storage.publish_tree(storage.local_copy(src), storage.join(cfg.out, "model"))
    n_stopped = sum(r["status"] == "early_stopped" for r in rows)
    print(f"raycat tune: {len(rows)} trials ({n_stopped} stopped early by ASHA); best {best['trial_id']} with valid "
          f"loss {best['valid_loss']:.4f}, accuracy {best['accuracy']:.4f}; recipe in "
          f"{storage.join(cfg.out, 'best_recipe.json')} (use with raycat train --config)")
    return 0
