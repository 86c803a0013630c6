"""`raycat train` and `raycat lr-find` on the driver: check inputs, stream the files to Ray Train's
workers, run the recipe there, then write the contract's outputs from the final checkpoint."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

from raycat.config import TrainConfig
from raycat.core.loop import gathers_features
from raycat.core.recipe import SWEEP_ALWAYS, SWEEP_ONLY, SWEEP_UNLESS_LR
from raycat.edge import outputs, report, storage, weights
from raycat.edge.layout import scan_layout
from raycat.errors import BadInput
from raycat.shell import resume
from raycat.shell.train_worker import WorkerResult

# Heap a Train worker needs besides its cache of decoded images: torch, the model, its gradients and
# optimizer state, activations of a batch (generous for resnet50 at 224 px, batch 64).
WORKER_HEADROOM = 2 << 30


class InputError(BadInput):
    """Bad input found before training (exit 2)."""


@dataclass
class FitResult:
    """What a finished Ray Train run hands back to the driver."""

    result: WorkerResult
    classes: list[str]
    cache: bool
    cpus_per_worker: int
    split: str  # resume.split_digest of the layout trained on
    stepping: dict  # what the schedule steps by, and its sweeps: global_batch, steps_per_epoch, sweeps
    weights_from: str  # what the run started from (weights.starting_model), for metrics.json and model.json
    started_at: float  # when the command started (time.time())
    ray_up_at: float  # when Ray was up (joined or started)
    groups: list[dict]  # the worker groups this command ran (console.Relay.groups)
    batch_size: int  # images a step per worker at MAX workers (--batch-size, or Recipe.batch_for's)


def cache_fits(mode: str, n_images: int, size: int, workers: int, memory_per_worker: float) -> bool:
    """Whether each worker keeps its shard's decoded pixels (uint8, 3 x size^2 bytes an image):
    `memory`/`stream` force it; `auto` keeps them when they fit in the heap Ray has for a worker,
    less what training itself needs."""
    if mode != "auto":
        return mode == "memory"
    return cache_bytes(n_images, size, workers) <= memory_per_worker - WORKER_HEADROOM


def cache_bytes(n_images: int, size: int, workers: int) -> int:
    return -(-n_images // workers) * 3 * size * size


def activations_bytes(n_train: int, n_valid: int, dim: int, workers: int) -> int:
    """The body's activations (float32) a worker holds while the frozen stages run: its shard's
    train and valid ones, and everyone's train ones where they fit the gather limit (Loop.all_features)."""
    everyone = n_train * dim * 4
    own = -(-(n_train + n_valid) // workers) * dim * 4
    return own + (everyone if gathers_features(everyone) else 0)


def resize_interval_s() -> float:
    """How often Ray Train looks for room to grow an elastic group (a grow restarts the group from
    the latest checkpoint, so not too often); $RAYCAT_RESIZE_INTERVAL_S overrides."""
    return float(os.environ.get("RAYCAT_RESIZE_INTERVAL_S", "60"))


def run_config(out: str, name: str, callbacks=None):
    """Ray Train's RunConfig for a run whose checkpoints live under OUT/checkpoints/<name>: the
    same for `raycat train` and every tune trial."""
    import ray.train

    return ray.train.RunConfig(
        name=name,
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        # A worker that dies is replaced and the run goes on from the latest checkpoint.
        failure_config=ray.train.FailureConfig(max_failures=3),
        # Ray Train's own INFO lines would bury the epoch table; warnings and errors still show.
        logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        callbacks=list(callbacks or []),
        **storage.ray_storage(storage.join(out, "checkpoints")),
    )


def fit(cfg: TrainConfig, sweeps: str = SWEEP_ALWAYS, callbacks=None, resumable: bool = True,
        on_epoch=None, on_ready=None, start=None, live_report: bool = False) -> FitResult:
    """Everything up to the final checkpoint. Inputs, OUT and --weights are checked before any
    cluster time is spent. `resumable=False` (tune's trials) leaves resuming to Tune. `on_epoch(row,
    i)` sees each epoch's row as it ends, `i` its index in the run's history (a tracker);
    `on_ready()` is called once the inputs are checked, before Ray (a tracker starts its run).
    `start` (a RecipeState) is where a run without a checkpoint begins (lr_find_job.lr_find_done).
    `live_report` rewrites OUT/report.html as each epoch ends (report.LiveReport).
    `sweeps` says which lr_find sweeps the run has (core.recipe.plan)."""
    started_at = time.time()
    recipe, res = cfg.recipe.resolved(), cfg.resources
    from raycat.core import bodies

    bodies.info(recipe.arch)  # a body raycat can build, before anything is read (exit 2 naming close ones)
    layout = scan_layout(cfg.data, cfg.labels, cfg.valid_pct, recipe.seed)
    outputs.check_writable(cfg.out)
    import torch

    torch.manual_seed(recipe.seed)
    model, weights_from = weights.starting_model(recipe.arch, recipe.weights, recipe.stem, layout.classes)
    # model/weights.pt, two kept checkpoints and one being written (each about a copy of the
    # weights), the plots and tables.
    outputs.check_space(cfg.out, 4 * outputs.model_bytes(model.state_dict()) + 16 * outputs.MB,
                        "the model, its checkpoints and the plots")
    lo, hi = res.workers
    if len(layout.train) < hi:
        raise InputError(f"--workers {res.workers}: more workers than training images ({len(layout.train)})")
    recipe = dataclasses.replace(recipe, batch_size=recipe.batch_for(len(layout.train), hi))
    # What the schedule steps by, whatever the group's size: the global batch and the steps an epoch
    # (a resumed run must have the same, or its schedule and step numbers would change mid-run).
    stepping = {**recipe.stepping(len(layout.train), hi), "sweeps": sweeps}  # (which units the run has)
    name = "lr_find" if sweeps == SWEEP_ONLY else "train"
    split = resume.split_digest(layout)
    print(f"raycat {name}: {recipe.arch}, starting from {weights_from}")
    if resumable:  # tune's trials resume through Tune instead
        note = resume.prepare(cfg, layout.classes, split, name, stepping)
        if note:
            print(note)
    if on_ready is not None:
        on_ready()

    import ray
    from ray.train import DataConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raycat.shell import console, group_watch, pipeline, ray_session
    from raycat.shell.train_worker import WorkerPlan, load_result, train_loop

    ray_session.connect(res.address, res.verbose)
    ray_up_at = time.time()
    cpus = ray_session.worker_cpus(res.cpus_per_worker, hi, res.gpu, ray_session.node_cpus())
    memory = ray.available_resources().get("memory", 0.0) / hi
    # The cache is sized for the smallest group: its workers hold the largest shards.
    cache = cache_fits(res.cache, len(layout.train) + len(layout.valid), recipe.size, lo, memory)
    per_worker = {"CPU": cpus, **({"GPU": 1} if res.gpu else {})}
    held = cache_bytes(len(layout.train) + len(layout.valid), recipe.size, lo) if cache else 0
    if recipe.frozen_stages:  # precomputed activations live in the worker's heap too
        held += activations_bytes(len(layout.train), len(layout.valid), model.head[0].num_features, lo)
    if held:  # reserve what the worker's heap holds beyond its headroom
        per_worker["memory"] = held
    if res.address is None and not os.environ.get("RAY_ADDRESS"):
        # Nothing joins a local instance: a group it can never hold would wait for ever.
        room = group_watch.workers_that_fit(ray_session.node_totals(), per_worker)
        if room < lo:
            raise InputError(f"--workers {res.workers}: this machine's Ray instance holds {room} worker(s) of "
                             f"{per_worker.get('CPU')} CPU{' + 1 GPU' if res.gpu else ''}"
                             f"{f' + {held / 2**30:.1f} GiB of memory' if held else ''}; "
                             "lower --workers or --cpus-per-worker")
    print(f"raycat {name}: {len(layout.train)} train and {len(layout.valid)} valid files; "
          f"{f'{lo} to {hi} workers (elastic)' if res.workers.elastic else f'{hi} worker(s)'} "
          f"x {cpus} CPU{' + 1 GPU' if res.gpu else ''}; decoded images "
          f"{'kept in memory after the first pass' if cache else 'streamed every epoch'}")
    plan = WorkerPlan(recipe=recipe, classes=layout.classes, initial_state=ray.put(model.state_dict()),
                      steps_per_epoch=stepping["steps_per_epoch"], global_batch=stepping["global_batch"],
                      gpu=res.gpu, cache=cache, cpus=cpus, precision=recipe.precision,
                      valid=ray.put((layout.valid.paths, layout.valid.labels)), sweeps=sweeps, top=cfg.top,
                      start=ray.put(start) if start is not None else None)
    counts = {"n_train": len(layout.train), "n_valid": len(layout.valid), "n_skipped": len(layout.bad)}
    live = report.LiveReport(cfg, weights_from, layout.classes, counts) if live_report else None

    def told(row: dict, index: int) -> None:  # an epoch whose checkpoint is kept
        if live is not None:
            live.epoch(row, index)
        if on_epoch is not None:
            on_epoch(row, index)

    relay = console.Relay(on_epoch=told)
    plan.console = relay.queue
    watch = group_watch.GroupWatch(relay.queue, per_worker, lo, hi, name)
    elastic = {"elastic_resize_monitor_interval_s": resize_interval_s()} if res.workers.elastic else {}
    if res.workers.elastic:
        # Just after a node is lost, Ray Train may still count it and try to start the old size;
        # that attempt waits this long before it counts again (Ray's default, 60 s, is a minute
        # lost on every node loss). A retry costs nothing: start-up timeouts are not failures.
        os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "30")
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=plan,
        scaling_config=ScalingConfig(num_workers=(lo, hi) if res.workers.elastic else hi, use_gpu=res.gpu,
                                     resources_per_worker=per_worker, placement_strategy=res.placement, **elastic),
        run_config=run_config(cfg.out, name, [*(callbacks or []), watch]),
        datasets={"train": pipeline.files_dataset(layout.train.paths, layout.train.labels, shuffle_seed=recipe.seed)},
        # In order: with --seed the rows arrive in the seeded order, so a run is reproducible (and
        # two trials with the same settings tie, as ASHA expects).
        dataset_config=DataConfig(datasets_to_split=["train"],
                                  execution_options=ray.data.ExecutionOptions(preserve_order=True)),
    )
    try:
        result = load_result(trainer.fit().checkpoint)
    finally:
        relay.close()
    if result is None:
        raise RuntimeError("training ended without a checkpoint")
    result.skipped = sorted(set(result.skipped) | set(layout.bad))  # labels-file rows, unreadable folders
    return FitResult(result=result, classes=layout.classes, cache=cache, cpus_per_worker=cpus, split=split,
                     stepping=stepping,
                     weights_from=weights_from, started_at=started_at, ray_up_at=ray_up_at,
                     groups=relay.groups, batch_size=recipe.batch_size)


def run_train(cfg: TrainConfig, start=None) -> int:
    from raycat.config import to_dict
    from raycat.shell import tracking

    t0 = time.time()
    tracking.require(cfg.tracking)
    tracker = None

    def start_tracking() -> None:
        # Once fit has checked the inputs: a bad input (exit 2) leaves no tracked run behind.
        nonlocal tracker
        tracker = tracking.tracker(cfg.tracking, cfg.out, to_dict(cfg.recipe), run_name=storage.basename(cfg.out))

    try:
        # With --lr the sweeps' curves would go unused: none unless --lr-find asks (each costs an epoch or more)
        fitted = fit(cfg, sweeps=SWEEP_ALWAYS if cfg.lr_find else SWEEP_UNLESS_LR,
                     on_epoch=lambda row, i: tracker.log_epoch(row, i), on_ready=start_tracking, start=start,
                     live_report=True)
    except BaseException:
        # A run that started and did not finish says so (MLflow would show it RUNNING for ever).
        if tracker is not None:
            tracking.fail(tracker)
        raise
    from raycat.shell.train_outputs import finish_run

    finish_run(cfg, fitted, tracker)
    f = fitted.result.state.final
    print(f"raycat train: valid accuracy {f['valid_accuracy']:.4f} (TTA {f['valid_accuracy_tta']:.4f}) after "
          f"{f['epochs']} epochs in {time.time() - t0:.0f}s; outputs in {cfg.out}")
    return 0
