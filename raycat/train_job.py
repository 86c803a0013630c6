"""`raycat train` and `raycat lr-find` on the driver: check inputs, decode and precompute on Ray
Data, run the recipe on Ray Train, then write the contract's outputs from the final checkpoint."""

from __future__ import annotations

import time

import torch

from raycat import outputs, resume, storage
from raycat.augment import AugmentSpec
from raycat.config import TrainConfig, to_dict
from raycat.errors import BadInput
from raycat.layout import scan_layout
from raycat.model import create_model
from raycat.recipe import GROUP_NAMES, RecipeState

HISTORY_COLUMNS = ["stage", "epoch", "lr", "train_loss", "valid_loss", "accuracy", "seconds"]
STEPS_COLUMNS = ["stage", "step", "loss", *[f"lr_{g}" for g in GROUP_NAMES]]


class InputError(BadInput):
    """Bad input found before training (exit 2)."""


def _run_config(cfg: TrainConfig, name: str):
    import ray.train

    ckpt_uri = storage.join(cfg.out, "checkpoints")
    fs, path = storage.filesystem(ckpt_uri)
    kwargs = {"storage_path": path, "storage_filesystem": fs} if storage.is_s3(ckpt_uri) else {"storage_path": path}
    return ray.train.RunConfig(
        name=name,
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        # A worker that dies is replaced and the run goes on from the latest checkpoint.
        failure_config=ray.train.FailureConfig(max_failures=3),
        # Ray's per-report INFO lines would bury the epoch table; warnings and errors still show.
        logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        **kwargs,
    )


def fit_recipe(cfg: TrainConfig, only_lr_find: bool = False, run_config=None, callbacks=None) -> dict:
    """Everything up to the final RecipeState; returns it with the classes and skipped files."""
    layout = scan_layout(cfg.data)
    outputs.check_writable(cfg.out)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.arch, len(layout.classes), cfg.weights)  # bad --weights: exit 2, before Ray
    # model/weights.pt, two kept checkpoints and one being written (each about a copy of the
    # weights), the plots and tables.
    outputs.check_space(cfg.out, 4 * outputs.model_bytes(model.state_dict()) + 16 * outputs.MB,
                        "the model, its checkpoints and the plots")
    if run_config is None:  # tune's trials resume through Tune instead
        note = resume.prepare(cfg, layout.classes, "lr_find" if only_lr_find else "train")
        if note:
            print(note)

    import ray
    from ray.train import DataConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raycat import features, pipeline, ray_session
    from raycat.train_worker import load_state, steps_per_epoch, train_loop

    ray_session.connect(cfg.address)
    t0 = time.time()
    train = pipeline.cache_images(layout.train.paths, layout.train.labels, cfg.size, shuffle_seed=cfg.seed)
    valid = pipeline.cache_images(layout.valid.paths, layout.valid.labels, cfg.size)
    for name, c in (("train", train), ("valid", valid)):
        if c.count == 0:
            raise InputError(f"{storage.join(cfg.data, name)}: no readable images ({len(c.skipped)} skipped)")
    if train.count < cfg.workers:
        raise InputError(f"--workers {cfg.workers}: more workers than readable training images ({train.count})")
    state_ref = ray.put(model.state_dict())
    use_features = cfg.precompute_epochs > 0
    datasets = {"train_images": train.augmented(AugmentSpec(cfg.aug, cfg.max_zoom))}
    valid_feature_shards = None
    if use_features:
        datasets["train_features"] = features.precompute(train.dataset, cfg.arch, len(layout.classes), state_ref,
                                                         cfg.workers, cfg.gpu)
        valid_feats = features.precompute(valid.dataset, cfg.arch, len(layout.classes), state_ref, cfg.workers,
                                          cfg.gpu)
        valid_feature_shards = valid_feats.split(cfg.workers, equal=False)
    print(f"raycat: {train.count} train and {valid.count} valid images decoded"
          f"{' and their activations precomputed' if use_features else ''} in {time.time() - t0:.1f}s; "
          f"{len(train.skipped) + len(valid.skipped)} skipped")
    loop_config = {
        "cfg": to_dict(cfg),
        "n_classes": len(layout.classes),
        "initial_state": state_ref,
        "batch_size": cfg.batch_size,
        "steps_per_epoch": steps_per_epoch(train.count, cfg.workers, cfg.batch_size),
        "features": use_features,
        "valid_shards": valid.dataset.split(cfg.workers, equal=False),
        "valid_feature_shards": valid_feature_shards,
        "only_lr_find": only_lr_find,
    }
    run_config = run_config or _run_config(cfg, "lr_find" if only_lr_find else "train")
    if callbacks:
        run_config.callbacks = list(callbacks)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpu, placement_strategy=cfg.placement),
        run_config=run_config,
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=list(datasets)),
    )
    result = trainer.fit()
    state = load_state(result.checkpoint)
    if state is None:
        raise RuntimeError("training ended without a checkpoint")
    return {"state": state, "classes": layout.classes, "skipped": train.skipped + valid.skipped,
            "n_train": train.count, "n_valid": valid.count}


def write_train_outputs(cfg: TrainConfig, state: RecipeState, classes: list[str], skipped, extra: dict) -> None:
    out = cfg.out
    # metrics.json goes first and comes back last: an OUT that has it holds one whole run's outputs.
    storage.delete_tree(storage.join(out, "metrics.json"))
    outputs.write_model(out, state.model_state, cfg.arch, classes, cfg.size, cfg.aug, cfg.max_zoom)
    outputs.write_dicts(storage.join(out, "history.csv"), state.history, HISTORY_COLUMNS)
    from raycat import plots

    storage.write_bytes(storage.join(out, "history.png"), plots.history_png(state.history))
    outputs.write_dicts(storage.join(out, "steps.csv"), state.steps, STEPS_COLUMNS)
    for name, found in state.lr_finds.items():
        outputs.write_lr_find(out, name, found)
    f = state.final
    outputs.write_confusion(out, f["confusion_matrix"], classes, "confusion matrix (valid set, best epoch)")
    outputs.write_skipped(out, skipped)
    outputs.write_json(storage.join(out, "metrics.json"), {
        "valid_accuracy": f["valid_accuracy"],
        "valid_loss": f["valid_loss"],
        "valid_accuracy_tta": f["valid_accuracy_tta"],
        "valid_loss_tta": f["valid_loss_tta"],
        "tta_views": cfg.tta,
        "epochs": f["epochs"],
        "seconds": round(state.seconds, 2),
        "classes": classes,
        "base_lr": state.base_lr,
        "unfrozen_lr": state.unfrozen_lr,
        "stopped_early": state.stopped_early,
        "workers": cfg.workers,
        "worker_nodes": state.worker_nodes,
        "n_skipped": len(skipped),
        **extra,
    })


def run_train(cfg: TrainConfig) -> int:
    t0 = time.time()
    r = fit_recipe(cfg)
    write_train_outputs(cfg, r["state"], r["classes"], r["skipped"],
                        {"n_train": r["n_train"], "n_valid": r["n_valid"]})
    resume.mark_finished(cfg, r["classes"])
    f = r["state"].final
    print(f"raycat train: valid accuracy {f['valid_accuracy']:.4f} (TTA {f['valid_accuracy_tta']:.4f}) after "
          f"{f['epochs']} epochs in {time.time() - t0:.0f}s; outputs in {cfg.out}")
    return 0


def run_lr_find(cfg: TrainConfig) -> int:
    r = fit_recipe(cfg, only_lr_find=True)
    found = r["state"].lr_finds["lr_find"]
    outputs.write_lr_find(cfg.out, "lr_find", found)
    outputs.write_skipped(cfg.out, r["skipped"])
    print(f"raycat lr-find: suggested lr {found['suggestion']:.2e}; curve in "
          f"{storage.join(cfg.out, 'lr_find.png')}")
    return 0
