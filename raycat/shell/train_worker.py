"""The Ray Train worker: a thin shell that feeds streamed file bytes to the plain-PyTorch recipe and
turns its per-unit state into Ray Train reports and checkpoints.

Data on a worker: its split of the train files arrives as bytes from Ray Data; the worker decodes
them on its device (core/decode.py) and, in `memory` cache mode, keeps the decoded pixels of its
shard, so the first pass is the only one that reads or decodes. In `stream` mode every epoch reads
and decodes again, for train sets larger than the workers' memory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from raycat.config import Recipe
from raycat.core.data import Batch, batch_share, index_batches, loss_weight
from raycat.core.decode import decode_batch
from raycat.core.device import to_device
from raycat.core.recipe import SWEEP_ALWAYS, RecipeState
from raycat.shell import faults
from raycat.shell.pipeline import files_dataset, good_rows

STATE_FILE = "recipe_state.pt"
RUN_FILE = "run_info.json"  # beside the state: the workers' nodes and the files they skipped


@dataclass
class WorkerPlan:
    """What the driver hands every Train worker."""

    recipe: Recipe  # resolved
    classes: list[str]
    initial_state: object  # ObjectRef of the starting weights (a state dict)
    steps_per_epoch: int  # the same whatever the group's size (core.data.batch_share)
    global_batch: int  # images a step, all workers together
    gpu: bool  # the worker's GPU decodes, trains and scores
    cache: bool  # keep decoded pixels after the first pass
    cpus: int  # CPUs this worker reserved: its torch and decode threads
    precision: str  # auto | fp32 | bf16
    valid: object  # ObjectRef of the valid files (paths, labels): each worker cuts its part by its group's size
    sweeps: str = SWEEP_ALWAYS  # which lr_find sweeps the run has (core.recipe.plan)
    start: object = None  # ObjectRef of a RecipeState to start from when there is no checkpoint (or None)
    top: int = 16  # images in each grid of the valid images worth a look
    console: object = None  # the driver's console queue (console.Relay): where rank 0's lines go


@dataclass
class WorkerResult:
    """What the driver reads back from the final checkpoint."""

    state: RecipeState
    worker_nodes: list[str]
    skipped: list[tuple[str, str]]
    n_train: int  # readable images, all workers
    n_valid: int
    grids: dict[str, list]  # the valid images worth a look: grid name -> rows (grids.py), by path


class NoImages(RuntimeError):
    """A worker's share of the data held no readable image (found while streaming it: exit 1)."""


class ShardData:
    """This worker's data (core.data.RecipeData): its split of the streamed train files, its part of
    the valid files, decoded here on `device`. A resized group is new processes: its workers read
    and decode their (new) shards again in their first pass."""

    def __init__(self, train_shard, valid_ds, size: int, batch_size: int, steps_per_epoch: int,
                 device: torch.device, cache: bool, threads: int):
        self.train_shard, self.valid_ds = train_shard, valid_ds
        self.size, self.bs, self.steps_per_epoch, self.device, self.cache = size, batch_size, steps_per_epoch, \
            device, cache
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads)) if device.type == "cpu" else None
        self.skipped: set[tuple[str, str]] = set()
        self.train_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self.valid_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self.n_train = self.n_valid = 0
        self.valid_paths: list[str] = []  # the valid images, in valid_batches' order (after one whole pass)

    def _decoded(self, batches, paths: list[str] | None = None) -> Iterator[Batch]:
        """Decode streamed {path, label, data, error} batches; bad files are noted, never fatal.
        The paths of the images yielded are appended to `paths`."""
        for b in batches:
            ok = good_rows(b["error"])
            self.skipped.update((str(p), str(e)) for p, e in zip(b["path"][~ok], b["error"][~ok], strict=True))
            idx = np.flatnonzero(ok)
            images, errors = decode_batch([b["data"][i] for i in idx], self.size, self.device, self.pool)
            self.skipped.update((str(b["path"][i]), e) for i, e in zip(idx, errors, strict=True) if e)
            keep = [i for i, e in zip(idx, errors, strict=True) if not e]
            if keep:
                if paths is not None:
                    paths += [str(b["path"][i]) for i in keep]
                yield images, to_device(torch.as_tensor(b["label"][keep], dtype=torch.long), self.device)

    def _stream_train(self) -> Iterator[Batch]:
        """One pass over this worker's split of the train files; counts the readable images and,
        in memory cache mode, keeps them: the next passes come from memory."""
        kept, n = [], 0
        for x, y in self._decoded(self.train_shard.iter_batches(batch_size=self.bs, batch_format="numpy",
                                                                prefetch_batches=2)):
            n += len(x)
            if self.cache:
                kept.append((x, y))
            yield x, y
        self.n_train = n
        if n == 0:
            raise NoImages(f"no readable images in this worker's share of the train files ({len(self.skipped)} "
                           "skipped so far; `raycat check DATA` lists them)")
        if self.cache:
            self.train_cache = (torch.cat([x for x, _ in kept]), torch.cat([y for _, y in kept]))

    def train_batches(self, gen: torch.Generator) -> Iterator[Batch]:
        if self.train_cache is not None:
            x, y = self.train_cache
            for idx in index_batches(len(x), self.bs, self.steps_per_epoch, gen):
                yield to_device(x[idx], self.device), to_device(y[idx], self.device)
            return
        # The stream: every worker gets the same number of rows, so the same number of batches;
        # a batch whose every file was bad is made up by repeating the last good one.
        steps, last = 0, None
        for x, y in self._stream_train():
            if steps < self.steps_per_epoch:
                steps, last = steps + 1, (x, y)
                yield x, y
        while last is not None and steps < self.steps_per_epoch:
            steps += 1
            yield last

    def train_pass(self) -> Iterator[Batch]:
        if self.train_cache is not None:
            x, y = self.train_cache
            for i in range(0, len(x), self.bs):
                yield to_device(x[i:i + self.bs], self.device), to_device(y[i:i + self.bs], self.device)
            return
        yield from self._stream_train()

    def valid_batches(self) -> Iterator[Batch]:
        if self.valid_cache is not None:
            x, y = self.valid_cache
            for i in range(0, len(x), self.bs):
                yield x[i:i + self.bs], y[i:i + self.bs]
            return
        kept, n, paths = [], 0, []
        # The valid dataset keeps its order (pipeline.files_dataset), so every pass, streamed or
        # cached, yields the images in the order of these paths.
        for x, y in self._decoded(self.valid_ds.iter_batches(batch_size=self.bs, batch_format="numpy"), paths):
            n += len(x)
            if self.cache:
                kept.append((x, y))
            yield x, y
        self.n_valid, self.valid_paths = n, paths
        if self.cache:
            empty = (torch.zeros(0, 3, self.size, self.size, dtype=torch.uint8, device=self.device),
                     torch.zeros(0, dtype=torch.long, device=self.device))
            self.valid_cache = (torch.cat([x for x, _ in kept]), torch.cat([y for _, y in kept])) if kept else empty


def valid_part(valid: tuple[list[str], list[int]], rank: int, world: int) -> tuple[list[str], list[int]]:
    """Rank `rank`'s part of the valid set (paths, labels) in a group of `world` workers: every
    `world`-th file from its rank on, so the parts of any group size hold each file once. Each
    worker cuts its own when its group starts; the driver hands over the one list whatever MAX is
    (it used to build a dataset for every rank of every group size, about MAX^2 / 2 of them)."""
    paths, labels = valid
    return paths[rank::world], labels[rank::world]


def load_result(checkpoint) -> WorkerResult | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        state = RecipeState.from_dict(torch.load(os.path.join(d, STATE_FILE), weights_only=True))
        with open(os.path.join(d, RUN_FILE)) as f:
            info = json.load(f)
    return WorkerResult(state=state, worker_nodes=info["worker_nodes"],
                        skipped=[tuple(s) for s in info["skipped"]], n_train=info["n_train"], n_valid=info["n_valid"],
                        grids=info.get("grids", {}))


def _quiet_train_reports() -> None:
    # Ray Train logs "Reporting training result N: TrainingReport(...)" at INFO for every report,
    # under a logger named after its file; the epoch table says the same, once.
    import logging

    import ray.train.v2._internal.execution.context as train_context

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def train_loop(plan: WorkerPlan) -> None:
    """train_loop_per_worker for TorchTrainer."""
    import ray
    import ray.train
    import ray.train.torch

    from raycat.core import recipe as core_recipe
    from raycat.core.comm import LocalComm, TorchComm
    from raycat.core.device import resolve_precision, use_cpu_threads
    from raycat.core.model import create_model
    from raycat.shell import console

    _quiet_train_reports()
    r = plan.recipe
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if plan.gpu else torch.device("cpu")
    use_cpu_threads(plan.cpus)
    # The global batch is the recipe's whatever the group's size: this worker's share of it.
    share = batch_share(plan.global_batch, world, rank)
    r = dataclasses.replace(r, batch_size=share)
    torch.manual_seed(r.seed + rank)
    model = create_model(r.arch, len(plan.classes), stem=r.stem)
    model.load_state_dict(ray.get(plan.initial_state))
    comm = TorchComm() if world > 1 else LocalComm()
    # This group's cut of the valid set (each group size cuts it its own way), made here when the
    # group starts: the driver holds only the list.
    valid_ds = files_dataset(*valid_part(ray.get(plan.valid), rank, world))
    data = ShardData(ray.train.get_dataset_shard("train"), valid_ds, r.size, r.batch_size, plan.steps_per_epoch,
                     device, plan.cache, plan.cpus)
    node = ray.get_runtime_context().get_node_id()
    nodes = comm.gather_objects(node)
    previous = load_result(ray.train.get_checkpoint())

    def checkpoint(state: RecipeState) -> None:
        last = state.history[-1] if state.history else {}
        loss = last.get("valid_loss", math.inf)
        # Schedulers compare this number: no epoch yet, or a diverged one, reads as very bad, not NaN.
        # `epochs`: the rows this checkpoint holds (once it is kept, the driver's tracker logs them).
        metrics = {"units_done": state.units_done, "stage": last.get("stage", "lr_find"),
                   "valid_loss": loss if math.isfinite(loss) else 1e9, "accuracy": last.get("accuracy", 0.0),
                   "epochs": len(state.history)}
        found = comm.gather_objects((sorted(data.skipped), data.n_train, data.n_valid))
        # Every rank reaches the final state together: the gather is collective.
        valid_paths = comm.gather_objects(data.valid_paths) if state.final else None
        if rank != 0:
            ray.train.report(metrics)
            faults.hold("train", faults.HOLD_AT_EPOCH, len(state.history))
            return
        # A resumed run may not pass over the data again (nothing left to train): what the run
        # found before is carried over.
        info = {"worker_nodes": nodes,
                "skipped": sorted({tuple(s) for f in found for s in f[0]} | set(previous.skipped if previous else [])),
                "n_train": sum(f[1] for f in found) or (previous.n_train if previous else 0),
                "n_valid": sum(f[2] for f in found) or (previous.n_valid if previous else 0),
                "grids": (valid_paths and _named_grids(state.final, valid_paths, plan.classes))
                or (previous.grids if previous else {})}
        tmp = tempfile.mkdtemp(prefix="raycat-ckpt-")
        try:
            torch.save(state.to_dict(), os.path.join(tmp, STATE_FILE))
            with open(os.path.join(tmp, RUN_FILE), "w") as f:
                json.dump(info, f)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        # Inert unless a test set it (raycat/shell/faults.py): the group waits here, its checkpoint kept.
        faults.hold("train", faults.HOLD_AT_EPOCH, len(state.history), {"workers": world, "node": node})

    state = previous.state if previous else (ray.get(plan.start) if plan.start is not None else RecipeState())
    if plan.console is not None and rank == 0:
        log, progress, epoch_row = console.sender(plan.console)
    else:
        log, progress, epoch_row = (print if rank == 0 else (lambda _: None)), (lambda _: None), (lambda *_: None)
    # The checkpoint's epochs were told before, but maybe not to this command's driver: told again,
    # flagged so, the relay passes each to the tracker once (console.Relay).
    for i, row in enumerate(state.history if previous else []):
        epoch_row(i, row, True)
    sent = [len(state.history)]

    def checkpoint_and_tell(s: RecipeState) -> None:
        for i in range(sent[0], len(s.history)):
            epoch_row(i, s.history[i])  # its index in the history: a tracker's step, a resumed run's too
        sent[0] = len(s.history)
        checkpoint(s)

    # Decided once for the run: rank 0's reading of `auto` on its device, for every rank (ranks on
    # other kinds of CPU would otherwise train in different dtypes); a resumed run keeps the dtype
    # it started in (core.recipe.run says so where this node would have chosen another).
    precision = comm.gather_objects(resolve_precision(r.precision, device))[0]
    if rank == 0 and r.precision == "auto" and not previous:
        log(f"precision auto: {precision} on this {device.type}")
    core_recipe.run(r, model, data, comm, device, state, checkpoint_and_tell, log, plan.sweeps,
                    precision, console.throttled(progress), plan.top,
                    loss_weight(plan.global_batch, world, rank), plan.global_batch)


def _named_grids(final: dict, paths_by_rank: list[list[str]], classes: list[str]) -> dict[str, list] | None:
    """The final state's valid images worth a look (rows by index into the valid set gathered in
    rank order) named by path and class. None when this command saw no valid pass (a resumed run
    that had nothing left to do carries the earlier run's grids instead)."""
    from raycat.core.metrics import name_rows

    paths = [p for ps in paths_by_rank for p in ps]
    if not paths or len(paths) != int(final["confusion_matrix"].sum()):  # the images the rows index into
        # No pass here, or (streamed valid set) a file that went bad between the final passes:
        # the rows would be named by the wrong paths.
        return None
    look = final["worth_a_look"]
    return {"top_losses": name_rows(look["top_losses"], paths, classes),
            "most_uncertain": name_rows(look["least_confident"], paths, classes)}
