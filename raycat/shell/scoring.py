"""The scoring actor: a shard of image paths in; its Parquet part and a small summary out.

One pass per image: the actor reads the file bytes (I/O threads), decodes them on its device,
scores every TTA view, and writes the shard's rows as one Parquet part under the run's staging
folder, then the shard's summary (counts, confusion, skipped files, the images worth a look)
beside it. The summary is written last: it marks the shard done, so a resumed run skips it.
"""

from __future__ import annotations

import hashlib
import io
import json
import zlib
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from raycat.edge import storage
from raycat.shell import faults
from raycat.shell.listing import shard_of

PARTS, DONE = "parts", "done"
IO_THREADS = 8  # file reads in flight per actor: enough to hide an object store's latency
# What an actor's memory reservation assumes of a file read ahead (a camera JPEG is 2-5 MB; a
# larger file still reads, the reservation is a scheduling estimate).
FILE_BYTES = 4 * 2**20
BASE_BYTES = 768 * 2**20  # torch, Ray's worker and the model, measured at about 600 MB for Lite0


def read_ahead(batch_size: int) -> int:
    """Files an actor holds read but not yet decoded: enough to keep IO_THREADS busy while a batch
    decodes, never the whole shard (512 files of 8 MB would be 4 GB an actor)."""
    return IO_THREADS + batch_size


def actor_memory(batch_size: int, size: int, tta: int) -> int:
    """Bytes a scoring actor reserves in Ray: its base, the files it reads ahead, and a batch's
    pixels through the body (about 40 bytes a pixel and channel at batch scale, views one at a
    time), so a node never runs more actors than its memory holds."""
    views = 1 if tta <= 1 else 2  # the batch and one view of it at once
    return BASE_BYTES + read_ahead(batch_size) * FILE_BYTES + batch_size * 3 * size * size * 40 * views


def bounded_map(pool: Executor, fn: Callable, items: Iterable, window: int) -> Iterator:
    """fn over items on the pool, in order, at most `window` results held or running at once."""
    it = iter(items)
    pending: deque = deque()
    for item in it:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            break
    while pending:
        result = pending.popleft().result()
        nxt = next(it, _END)
        if nxt is not _END:
            pending.append(pool.submit(fn, nxt))
        yield result


_END = object()


@dataclass(frozen=True)
class ScoringSpec:
    """What every scoring actor needs (the driver builds it once)."""

    model: str  # the model/ folder
    card: dict  # its model.json, validated by the driver
    tta: int
    tta_beta: float
    batch_size: int
    gpu: bool
    cpus: int
    run: str  # the run's staging folder (predict_job.py)
    top: int  # candidates each shard keeps for the top-losses and least-confident grids
    precision: str = "auto"  # --precision, resolved by each actor on its own device
    done: frozenset = frozenset()  # shards an earlier run of the same settings wrote a summary for


def part_name(shard: str) -> str:
    return f"part-{shard}.parquet"


def part_uri(run: str, shard: str) -> str:
    return storage.join(run, PARTS, part_name(shard))


def shard_digest(paths: list[str], labels: list[int], bad: list) -> str:
    """What a shard holds: a resumed run reuses a shard's summary only for the same images."""
    h = hashlib.sha256(json.dumps([paths, labels, [list(b) for b in bad]]).encode())
    return h.hexdigest()[:16]


def summary_uri(run: str, shard: str) -> str:
    return storage.join(run, DONE, f"{shard}.json")


class Scorer:
    """The scoring actor (scoring_pool.py runs N of them), holding the model on its device; plain
    Python, so tests run it in one process."""

    def __init__(self, spec: ScoringSpec):
        import torch

        from raycat.core.device import memory_format, pick_device, resolve_precision, use_cpu_threads
        from raycat.core.fold_bn import fold_batchnorm
        from raycat.edge import model_card

        use_cpu_threads(spec.cpus)
        self.spec = spec
        self.card = model_card.ModelCard.parse(spec.card, spec.model)
        self.device = pick_device(spec.gpu)
        self.precision = resolve_precision(spec.precision, self.device)
        fmt = memory_format(self.device, self.precision)  # the model's weights in the layout its input comes in
        model = model_card.load(spec.model, self.card).to(self.device, memory_format=fmt)
        # BatchNorms folded into their convolutions: the same numbers without their passes (core/fold_bn.py)
        example = torch.randn(2, 3, self.card.size, self.card.size, device=self.device).contiguous(memory_format=fmt)
        self.model, self.folded_bn = fold_batchnorm(model, example)
        # Threads that wait on storage (not counted in the reservation: they are idle while waiting),
        # and threads that decode (as many as the CPUs reserved).
        self.io_pool = ThreadPoolExecutor(max_workers=IO_THREADS)
        self.decode_pool = ThreadPoolExecutor(max_workers=spec.cpus) if self.device.type == "cpu" else None
        self.shards_started = 0  # (the fault-injection point counts them)

    def ready(self) -> bool:
        """Answers once the model is loaded (the pool waits for one actor before timing)."""
        return True

    def _read(self, path: str) -> tuple[bytes, str]:
        try:
            return storage.read_bytes(path), ""
        except (OSError, storage.StorageError) as e:
            return b"", f"unreadable: {str(e).splitlines()[0] if str(e) else type(e).__name__}"

    def score_shard(self, row: dict) -> dict:
        import torch

        from raycat.core import metrics
        from raycat.core.decode import decode_batch
        from raycat.core.device import autocast, memory_format
        from raycat.core.evaluate import view_probs
        from raycat.core.tta import tta_views

        # Inert unless a test set it (raycat/shell/faults.py): this actor waits here before a shard.
        faults.hold("score", faults.HOLD_AT_SHARD, self.shards_started, {"node": _node()})
        self.shards_started += 1
        shard, paths, labels, bad = shard_of(row)
        spec, classes, k = self.spec, self.card.classes, len(self.card.classes)
        digest = shard_digest(paths, labels, bad)
        if shard in spec.done:
            earlier = json.loads(storage.read_text(summary_uri(spec.run, shard)))
            if earlier.get("digest") == digest:
                return {**earlier, "resumed": True}
        # Views drawn from the shard's own seed: a rerun or a resumed run scores a shard identically.
        gen = torch.Generator().manual_seed(zlib.crc32(shard.encode()))
        views = tta_views(self.card.augment_spec(), spec.tta, gen)
        fmt = memory_format(self.device, self.precision)

        def forward(x):
            with autocast(self.device, self.precision):
                return self.model(x.contiguous(memory_format=fmt)).float()

        skipped = list(bad)
        kept_paths, kept_labels, probs = [], [], []
        # Reads run ahead of decoding and scoring (IO_THREADS at a time, in order) instead of waiting
        # between batches, but never more than read_ahead files: memory stays flat whatever the shard.
        # (IO_THREADS running or done, beside the batch being gathered: read_ahead in all)
        reads = bounded_map(self.io_pool, self._read, paths, IO_THREADS)
        for lo in range(0, len(paths), spec.batch_size):
            chunk = paths[lo:lo + spec.batch_size]
            read = [next(reads) for _ in chunk]
            ok = [i for i, (_, err) in enumerate(read) if not err]
            skipped += [(chunk[i], err) for i, (_, err) in enumerate(read) if err]
            images, errors = decode_batch([read[i][0] for i in ok], self.card.size, self.device, self.decode_pool)
            good = [i for i, e in zip(ok, errors, strict=True) if not e]
            skipped += [(chunk[i], e) for i, e in zip(ok, errors, strict=True) if e]
            if good:
                probs.append(view_probs(forward, images, views, spec.tta_beta))
                kept_paths += [chunk[i] for i in good]
                kept_labels += [labels[lo + i] for i in good]
        p = torch.cat(probs) if probs else torch.zeros(0, k)
        y = torch.tensor(kept_labels, dtype=torch.long)
        self._write_part(shard, kept_paths, y, p)
        labelled = y >= 0
        cm = metrics.confusion_matrix(p[labelled].argmax(1), y[labelled], k) if labelled.any() else None
        look = metrics.worth_a_look(p, y, spec.top)
        summary = {
            "shard": shard, "digest": digest, "n_scored": len(kept_paths), "skipped": skipped,
            "scoring_dtype": self.precision,
            "cm": cm.tolist() if cm is not None else None,
            **{grid: metrics.name_rows(rows, kept_paths, classes) for grid, rows in look.items()},
        }
        storage.write_text(summary_uri(spec.run, shard), json.dumps(summary))
        return summary

    def _write_part(self, shard: str, paths: list[str], y, p) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        classes = self.card.classes
        pred = p.argmax(1).numpy() if len(p) else np.zeros(0, dtype=np.int64)
        columns = {
            "path": pa.array(paths, type=pa.string()),
            "label": pa.array([classes[int(v)] if v >= 0 else None for v in y.tolist()], type=pa.string()),
            "prediction": pa.array([classes[int(v)] for v in pred], type=pa.string()),
            "confidence": pa.array(p.max(dim=1).values.numpy() if len(p) else [], type=pa.float32()),
        }
        for j, c in enumerate(classes):
            columns[f"p_{c}"] = pa.array(p[:, j].numpy(), type=pa.float32())
        buf = io.BytesIO()
        pq.write_table(pa.table(columns), buf)
        storage.write_bytes(part_uri(self.spec.run, shard), buf.getvalue())


def _node() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except Exception:  # noqa: BLE001 - only a label for the marker
        return ""
