"""The fast.ai folder layout: DATA/train/<class>/, DATA/valid/<class>/, optional DATA/test/.

Scanning lists files only; it never decodes. Labels come from folder names in sorted order, so
the class index of a name is the same on every machine and every run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from raycat import storage
from raycat.errors import BadInput

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


class LayoutError(BadInput):
    """The dataset's folders are not in the expected layout; the message names the folder."""


def is_image_name(name: str) -> bool:
    dot = name.rfind(".")
    return dot >= 0 and name[dot:].lower() in IMAGE_EXTENSIONS


@dataclass
class Split:
    """One split's files: `paths[i]` has class index `labels[i]` (-1 when unlabelled)."""

    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self, n_classes: int) -> list[int]:
        out = [0] * n_classes
        for y in self.labels:
            if y >= 0:
                out[y] += 1
        return out


@dataclass
class DatasetLayout:
    root: str
    classes: list[str]
    train: Split
    valid: Split
    test: Split


def unsafe_class_names(classes: object) -> list[str]:
    """The entries of a class list (from a model card, say) that could not be folder names: a class
    name must never be able to point a path elsewhere, should one ever be joined into one."""
    if not isinstance(classes, list) or not classes:
        return [repr(classes)]
    bad = [c for c in classes if not isinstance(c, str) or not c or c in (".", "..") or any(
        ch in c for ch in ("/", "\\", "\0"))]
    counts = Counter(c for c in classes if isinstance(c, str))
    dupes = sorted(c for c, n in counts.items() if n > 1)
    return [repr(c) for c in bad] + [f"{c!r} (twice)" for c in dupes]


def _relative_parts(root: str, uri: str) -> list[str]:
    rel = uri[len(root.rstrip("/")) + 1:]
    return rel.replace("\\", "/").split("/")


def _labelled_split(root: str, split: str) -> dict[str, list[str]]:
    """{class name: image URIs} for DATA/<split>/<class>/...; files anywhere below a class count."""
    base = storage.join(root, split)
    by_class: dict[str, list[str]] = {
        name: [] for name in storage.list_dir(base)
        if not name.startswith(".") and storage.is_dir(storage.join(base, name))
    }
    for uri in storage.list_files(base):
        parts = _relative_parts(base, uri)
        if len(parts) < 2 or not is_image_name(parts[-1]):
            continue
        by_class.setdefault(parts[0], []).append(uri)
    return by_class


def scan_layout(root: str) -> DatasetLayout:
    """List a dataset's images and classes, or raise LayoutError saying what is wrong and where."""
    root = storage.absolute(root)  # listed paths are absolute: so is the root they are cut from
    if not storage.exists(root):
        raise LayoutError(f"{root}: no such folder")
    missing = [s for s in ("train", "valid") if not storage.is_dir(storage.join(root, s))]
    if missing:
        raise LayoutError(
            f"{root}: no {' and no '.join(m + '/' for m in missing)} folder; expected "
            f"{root}/train/<class>/<image> and {root}/valid/<class>/<image>"
        )
    train = _labelled_split(root, "train")
    valid = _labelled_split(root, "valid")
    if not any(train.values()) and not any(valid.values()):
        raise LayoutError(f"{root}: no images found under train/ or valid/ (extensions: "
                          f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
    if set(train) != set(valid):
        only_t = sorted(set(train) - set(valid))
        only_v = sorted(set(valid) - set(train))
        detail = "; ".join(
            s for s in (f"only in train/: {', '.join(only_t)}" if only_t else "",
                        f"only in valid/: {', '.join(only_v)}" if only_v else "") if s
        )
        raise LayoutError(f"{root}: train/ and valid/ have different classes ({detail})")
    classes = sorted(train)
    if len(classes) < 2:
        only = classes[0] if classes else "none"
        raise LayoutError(f"{root}: only one class ({only}); a classifier needs at least two")
    for split_name, split in (("train", train), ("valid", valid)):
        for c in classes:
            if not split[c]:
                raise LayoutError(f"{storage.join(root, split_name, c)}: empty class folder (no images)")
    index = {c: i for i, c in enumerate(classes)}

    def to_split(by_class: dict[str, list[str]]) -> Split:
        s = Split()
        for c in classes:
            for uri in sorted(by_class[c]):
                s.paths.append(uri)
                s.labels.append(index[c])
        return s

    test = Split()
    test_root = storage.join(root, "test")
    if storage.is_dir(test_root):
        for uri in storage.list_files(test_root):
            if is_image_name(uri):
                test.paths.append(uri)
                test.labels.append(-1)
    return DatasetLayout(root=root, classes=classes, train=to_split(train), valid=to_split(valid), test=test)
