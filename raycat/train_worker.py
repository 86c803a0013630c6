"""The Ray Train worker: a thin shell that feeds Ray Data shards to the plain-PyTorch recipe and
turns its per-unit state into Ray Train reports and checkpoints."""

from __future__ import annotations

import math
import os
import shutil
import tempfile

import torch

from raycat.config import TrainConfig, build
from raycat.distributed import LocalComm, TorchComm
from raycat.model import create_model
from raycat.recipe import Recipe, RecipeState

STATE_FILE = "recipe_state.pt"


class RayShardData:
    """This worker's data: its split of the train datasets, its part of the valid set."""

    def __init__(self, config: dict, rank: int):
        import ray.train

        self.bs = config["batch_size"]
        self.steps_per_epoch = config["steps_per_epoch"]
        self.feature_steps_per_epoch = config["steps_per_epoch"]
        self._train_images = ray.train.get_dataset_shard("train_images")
        self._train_features = ray.train.get_dataset_shard("train_features") if config["features"] else None
        self._valid = config["valid_shards"][rank]
        self._valid_features = config["valid_feature_shards"][rank] if config["features"] else None
        # Shuffle within a window of rows; the blocks themselves arrive in varying order.
        self.shuffle_rows = 8 * self.bs

    def train_images(self):
        from raycat.pipeline import collate_normalized

        for b in self._train_images.iter_torch_batches(batch_size=self.bs, collate_fn=collate_normalized,
                                                       local_shuffle_buffer_size=self.shuffle_rows):
            yield b["image"], b["label"]

    def train_features(self):
        for b in self._train_features.iter_torch_batches(batch_size=self.bs,
                                                         local_shuffle_buffer_size=self.shuffle_rows):
            yield b["features"], b["label"]

    def valid_images(self):
        for b in self._valid.iter_batches(batch_size=self.bs, batch_format="numpy"):
            yield b["image"], torch.as_tensor(b["label"])

    def valid_features(self):
        for b in self._valid_features.iter_torch_batches(batch_size=self.bs):
            yield b["features"], b["label"]


def steps_per_epoch(n_train: int, workers: int, batch_size: int) -> int:
    # Ray splits the train set equally: each worker gets n // workers rows.
    return max(1, math.ceil((n_train // workers) / batch_size))


def load_state(checkpoint) -> RecipeState | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return RecipeState.from_dict(torch.load(os.path.join(d, STATE_FILE), weights_only=True))


def train_loop(config: dict) -> None:
    """train_loop_per_worker for TorchTrainer."""
    import ray
    import ray.train
    import ray.train.torch

    cfg = build(TrainConfig, config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.gpu else torch.device("cpu")
    if not cfg.gpu:
        # Ray gives each worker OMP_NUM_THREADS=1 (its one logical CPU); on CPU nodes the workers of a
        # node should share all its cores instead, or a lone worker leaves all but one idle.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, ctx.get_local_world_size())))
    torch.manual_seed(cfg.seed + rank)
    model = create_model(cfg.arch, config["n_classes"], "none")
    model.load_state_dict(ray.get(config["initial_state"]))
    comm = TorchComm() if world > 1 else LocalComm()
    data = RayShardData(config, rank)
    log = print if rank == 0 else (lambda *_: None)

    def checkpoint(state: RecipeState) -> None:
        last = state.history[-1] if state.history else {}
        loss = last.get("valid_loss", math.inf)
        # Schedulers compare this number: no epoch yet, or a diverged one, reads as very bad, not NaN.
        metrics = {"units_done": state.units_done, "stage": last.get("stage", "lr_find"),
                   "valid_loss": loss if math.isfinite(loss) else 1e9, "accuracy": last.get("accuracy", 0.0)}
        if rank != 0:
            ray.train.report(metrics)
            return
        tmp = tempfile.mkdtemp(prefix="raycat-ckpt-")
        try:
            torch.save(state.to_dict(), os.path.join(tmp, STATE_FILE))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    state = load_state(ray.train.get_checkpoint()) or RecipeState()
    node = ray.get_runtime_context().get_node_id()
    state.worker_nodes = [node] if world == 1 else comm.gather_objects(node)
    Recipe(cfg, model, data, comm, device, checkpoint, log).run(state, only_lr_find=config["only_lr_find"])
