"""Images on Ray Data: file bytes streamed to the processes that decode them.

Bytes travel, pixels are made where they are used: tasks read each file's bytes (local or S3) and
stream them, a few dozen files a block, to the Train worker or scoring actor that consumes them,
which decodes on its own device (core/decode.py) and augments there. A compressed image is a
tenth of its pixels' bytes, so the object store carries a tenth of the data, and decoding runs on
the CPUs (or GPU) the consumer reserved instead of competing with it from other processes.

The read tasks reserve no CPU (ray_session.py's rule): they wait on storage.
"""

from __future__ import annotations

import numpy as np

from raycat.edge import storage

READ_BATCH = 32  # files per read task call: amortises the task's overhead, keeps blocks small
NO_ERROR = ""  # the `error` column of a good row; any other value is why the file was skipped


def read_files(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{path, label} -> {path, label, data (file bytes), error}; a file that can't be read gets an error."""
    paths = [str(p) for p in batch["path"]]
    data, errors = [], []
    for path in paths:
        try:
            data.append(storage.read_bytes(path))
            errors.append(NO_ERROR)
        except (OSError, storage.StorageError) as e:
            data.append(b"")
            errors.append(f"unreadable: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    return {"path": np.asarray(paths, dtype=object), "label": np.asarray(batch["label"], dtype=np.int64),
            "data": np.asarray(data, dtype=object), "error": np.asarray(errors, dtype=object)}


def good_rows(errors) -> np.ndarray:
    """Mask of the rows whose file was read (and, after decoding, decoded)."""
    return np.asarray([e == NO_ERROR for e in errors], dtype=bool)


def read_tasks(cluster_cpus: float) -> int:
    """How many read tasks at once: enough to keep a few files in flight per consumer, few enough
    not to start more worker processes than the node can bring up at once."""
    return max(2, min(16, int(cluster_cpus)))


def files_dataset(paths: list[str], labels: list[int], shuffle_seed: int | None = None):
    """A lazy Ray dataset of {path, label, data, error} rows, one per file.

    With `shuffle_seed` the rows are put in a random (but reproducible) order first. Folder
    listings come sorted by class, and Ray splits by blocks of rows: without this, blocks (and so
    workers and batches) would each hold one or two classes.
    """
    import ray
    import ray.data

    items = [{"path": p, "label": int(y)} for p, y in zip(paths, labels, strict=True)]
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(items))
        items = [items[i] for i in order]
    n_blocks = max(1, min(len(items) // READ_BATCH + 1, 1000))
    tasks = read_tasks(ray.cluster_resources().get("CPU", 1))
    ds = ray.data.from_items(items, override_num_blocks=n_blocks).map_batches(
        read_files, batch_size=READ_BATCH, num_cpus=0, compute=ray.data.TaskPoolStrategy(size=tasks))
    ds.context.execution_options.preserve_order = True  # rows in this order: reproducible runs
    return ds


def decode_errors(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """For `raycat check`: each file's decode error ("" when it decodes), pixels dropped."""
    from raycat.core.decode import decode_batch

    errors = list(batch["error"])
    ok = [i for i, e in enumerate(errors) if e == NO_ERROR]
    _, decode_errs = decode_batch([batch["data"][i] for i in ok], size)
    for i, e in zip(ok, decode_errs, strict=True):
        errors[i] = e
    return {"path": batch["path"], "label": batch["label"], "error": np.asarray(errors, dtype=object)}


def check_files(paths: list[str], labels: list[int], size: int) -> list[tuple[str, str]]:
    """(path, reason) of every file that can't be read or decoded, decoding on the cluster's CPUs."""
    if not paths:
        return []
    checked = files_dataset(paths, labels).map_batches(decode_errors, fn_kwargs={"size": size},
                                                       batch_size=READ_BATCH, num_cpus=1)
    bad = []
    for b in checked.iter_batches(batch_size=1024, batch_format="numpy"):
        bad += [(str(p), str(e)) for p, e in zip(b["path"], b["error"], strict=True) if e != NO_ERROR]
    return sorted(bad)
