"""The image pipeline on Ray Data: list -> read and decode (once, cached) -> augment (every epoch).

Decoded, resized images are materialised in Ray's object store (which spills to disk when memory
is short), so decoding happens once per run. Augmentation is a lazy `map_batches` on top of that
cache: every pass over the dataset (every epoch) runs it again with fresh random draws.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from raycat import storage
from raycat.augment import AugmentSpec, augment_unit, normalize_uint8_chw, to_uint8
from raycat.decode import DecodeError, load_image

# Images per decode task: big enough to amortise task overhead, small enough to spread the work.
DECODE_BATCH = 32
AUGMENT_BATCH = 64


def decode_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Read and decode a batch of {path, label}; bad files get an `error` and a blank image."""
    paths = [str(p) for p in batch["path"]]
    images = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    errors = []
    for i, path in enumerate(paths):
        try:
            images[i] = load_image(storage.read_bytes(path), size)
            errors.append("")
        except DecodeError as e:
            errors.append(str(e))
        except (OSError, storage.StorageError) as e:
            errors.append(f"unreadable: {e}")
        except MemoryError:
            errors.append("unreadable: out of memory while decoding")
    return {
        "path": np.asarray(paths, dtype=object),
        "label": np.asarray(batch["label"], dtype=np.int64),
        "image": images,
        "error": np.asarray(errors, dtype=object),
    }


def _fresh_generator() -> torch.Generator:
    # Seeded from the OS on every call, so every epoch (every pass) draws new augmentations.
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1))


# Augmented views travel as uint8 (N, 3, H, W): a quarter of the bytes of float32 through Ray's
# object store. The consumer normalises (collate_normalized), on its own device.

def augment_rows(batch: dict[str, np.ndarray], spec: AugmentSpec) -> dict[str, np.ndarray]:
    x = to_uint8(augment_unit(batch["image"], spec, _fresh_generator()))
    return {"image": x.numpy(), "label": batch["label"]}


def plain_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    x = np.ascontiguousarray(np.asarray(batch["image"]).transpose(0, 3, 1, 2))
    return {"image": x, "label": batch["label"]}


def collate_normalized(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """collate_fn for iter_torch_batches: uint8 CHW images -> normalised float32, labels -> int64."""
    images = np.require(batch["image"], requirements=["C", "W"])
    return {"image": normalize_uint8_chw(torch.from_numpy(images)),
            "label": torch.as_tensor(np.asarray(batch["label"]), dtype=torch.long)}


@dataclass
class CachedImages:
    """Decoded images of one split, held by Ray, plus what could not be read."""

    dataset: object  # ray.data.MaterializedDataset with columns path, label, image (uint8 HWC)
    skipped: list[tuple[str, str]]  # (path, reason)
    count: int

    def augmented(self, spec: AugmentSpec):
        """A lazy dataset of freshly augmented uint8 CHW images each time it is read (see collate_normalized)."""
        return self.dataset.randomize_block_order().map_batches(augment_rows, fn_kwargs={"spec": spec},
                                                                 batch_size=AUGMENT_BATCH)

    def plain(self):
        return self.dataset.map_batches(plain_rows, batch_size=AUGMENT_BATCH)


def read_images(paths: list[str], labels: list[int], size: int, shuffle_seed: int | None = None):
    """Lazy Ray dataset of decoded images (columns path, label, image, error).

    With `shuffle_seed` the rows are put in a random (but reproducible) order first. Folder
    listings come sorted by class, and Ray splits and shuffles by blocks of rows: without this,
    blocks (and so workers and batches) would each hold one or two classes.
    """
    import ray.data

    items = [{"path": p, "label": int(y)} for p, y in zip(paths, labels, strict=True)]
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(items))
        items = [items[i] for i in order]
    n_blocks = max(1, min(len(items) // DECODE_BATCH + 1, 200))
    return ray.data.from_items(items, override_num_blocks=n_blocks).map_batches(
        decode_batch, fn_kwargs={"size": size}, batch_size=DECODE_BATCH
    )


def cache_images(paths: list[str], labels: list[int], size: int, shuffle_seed: int | None = None) -> CachedImages:
    """Decode every image once; keep the good ones in Ray's object store, list the bad ones."""
    decoded = read_images(paths, labels, size, shuffle_seed).materialize()
    # The bad rows come from the two small columns only; the images are copied into a second,
    # filtered cache only when there is something to drop (usually there is not: the decoded
    # cache is then used as it is, and its `error` column, all empty, is never read).
    bad = decoded.select_columns(["path", "error"]).map_batches(_rows_with_error, fn_kwargs={"bad": True},
                                                                batch_size=DECODE_BATCH * 16)
    skipped = [(str(r["path"]), str(r["error"])) for r in bad.take_all()]
    good = decoded
    if skipped:
        good = decoded.map_batches(_rows_with_error, fn_kwargs={"bad": False},
                                   batch_size=DECODE_BATCH * 4).materialize()
    return CachedImages(dataset=good, skipped=sorted(skipped), count=decoded.count() - len(skipped))


def _rows_with_error(batch: dict[str, np.ndarray], bad: bool) -> dict[str, np.ndarray]:
    mask = np.asarray([e != "" for e in batch["error"]], dtype=bool)
    if bad:
        return {"path": batch["path"][mask], "error": batch["error"][mask]}
    return {k: v[~mask] for k, v in batch.items() if k != "error"}
