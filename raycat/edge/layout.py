"""The fast.ai folder layout: DATA/train/<class>/, DATA/valid/<class>/, optional DATA/test/.

Scanning lists files only; it never decodes. Labels come from folder names in sorted order, so
the class index of a name is the same on every machine and every run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from raycat.edge import storage
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
    # (path, reason) for what was listed and can't be used: labels-file rows no image can come
    # from, folders that can't be read
    bad: list[tuple[str, str]] = field(default_factory=list)


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


def _labelled_split(root: str, split: str, unreadable: list) -> dict[str, list[str]]:
    """{class name: image URIs} for DATA/<split>/<class>/...; files anywhere below a class count.
    A folder that can't be read is no class (a volume's root-owned lost+found): it goes to
    `unreadable` as (path, reason), as an unreadable image is reported and skipped."""
    base = storage.join(root, split)
    found: list = []
    files = storage.list_files(base, unreadable=found)
    unreadable += found
    gone = {p.rstrip("/") for p, _ in found}
    by_class: dict[str, list[str]] = {
        name: [] for name in storage.list_dir(base)
        if not name.startswith(".") and storage.is_dir(storage.join(base, name))
        and storage.absolute(storage.join(base, name)).rstrip("/") not in gone
    }
    for uri in files:
        parts = storage.relative_parts(base, uri)
        if len(parts) < 2 or not is_image_name(parts[-1]):
            continue
        by_class.setdefault(parts[0], []).append(uri)
    return by_class


PATH_COLUMNS = ("path", "fname", "file", "filename", "image", "id")
SPLIT_COLUMNS = ("split", "is_valid")


def scan_layout(root: str, labels: str | None = None, valid_pct: float | None = None, seed: int = 0
                ) -> DatasetLayout:
    """List a dataset's images and classes, or raise LayoutError saying what is wrong and where.

    Two layouts: class folders (DATA/train/<class>/, DATA/valid/<class>/), or a folder of images with
    a labels file (`labels`: a CSV of `id|fname|path, label` and an optional `split` or `is_valid`
    column, as fast.ai's from_csv reads). Without a valid/ folder or a split column, `valid_pct`
    makes a seeded, stratified validation split. Rows a labels file can't use (a missing file, an
    empty label) and folders that can't be read are listed in `bad`, not fatal.
    """
    root = storage.absolute(root)  # listed paths are absolute: so is the root they are cut from
    if not storage.exists(root):
        raise LayoutError(f"{root}: no such folder")
    if labels:
        return _from_labels_file(root, labels, valid_pct, seed)
    has_valid = storage.is_dir(storage.join(root, "valid"))
    if not storage.is_dir(storage.join(root, "train")) or not (has_valid or valid_pct):
        missing = [s for s in ("train", "valid") if not storage.is_dir(storage.join(root, s))]
        raise LayoutError(
            f"{root}: no {' and no '.join(m + '/' for m in missing)} folder; expected "
            f"{root}/train/<class>/<image> and {root}/valid/<class>/<image> (or --valid-pct to split train/, "
            "or --labels FILE for a folder of images and a CSV of labels)"
        )
    if has_valid and valid_pct:
        raise LayoutError(f"--valid-pct: {root} has a valid/ folder already; drop --valid-pct to use it")
    unreadable: list[tuple[str, str]] = []
    train = _labelled_split(root, "train", unreadable)
    valid = _labelled_split(root, "valid", unreadable) if has_valid else None
    if not any(train.values()) and not (valid and any(valid.values())):
        raise LayoutError(f"{root}: no images found under train/ or valid/ (extensions: "
                          f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
    if valid is not None and set(train) != set(valid):
        only_t = sorted(set(train) - set(valid))
        only_v = sorted(set(valid) - set(train))
        detail = "; ".join(
            s for s in (f"only in train/: {', '.join(only_t)}" if only_t else "",
                        f"only in valid/: {', '.join(only_v)}" if only_v else "") if s
        )
        raise LayoutError(f"{root}: train/ and valid/ have different classes ({detail})")
    classes = sorted(train)
    _two_classes(root, classes)
    for split_name, split in (("train", train), ("valid", valid or {})):
        for c in classes if split_name == "train" or valid is not None else []:
            if not split[c]:
                raise LayoutError(f"{storage.join(root, split_name, c)}: empty class folder (no images)")
    items = [(uri, c) for c in classes for uri in sorted(train[c])]
    if valid is None:
        train_items, valid_items = stratified_split(items, valid_pct, seed)
    else:
        train_items, valid_items = items, [(uri, c) for c in classes for uri in sorted(valid[c])]
    test = Split()
    test_root = storage.join(root, "test")
    if storage.is_dir(test_root):
        for uri in storage.list_files(test_root, unreadable=unreadable):
            if is_image_name(uri):
                test.paths.append(uri)
                test.labels.append(-1)
    return DatasetLayout(root=root, classes=classes, train=_split(train_items, classes),
                         valid=_split(valid_items, classes), test=test, bad=unreadable)


def _two_classes(root: str, classes: list[str]) -> None:
    if len(classes) < 2:
        only = classes[0] if classes else "none"
        raise LayoutError(f"{root}: only one class ({only}); a classifier needs at least two")


def _split(items: list[tuple[str, str]], classes: list[str]) -> Split:
    index = {c: i for i, c in enumerate(classes)}
    s = Split()
    for uri, c in items:
        s.paths.append(uri)
        s.labels.append(index[c])
    return s


def stratified_split(items: list[tuple[str, str]], valid_pct: float, seed: int
                     ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, valid): `valid_pct` of each class's items to valid, drawn with `seed` (at least one of
    a class with two or more), the rest to train; each part in the items' order."""
    import random

    rng = random.Random(seed)
    by_class: dict[str, list[int]] = {}
    for i, (_, c) in enumerate(items):
        by_class.setdefault(c, []).append(i)
    to_valid: set[int] = set()
    for c in sorted(by_class):
        idx = by_class[c]
        k = round(len(idx) * valid_pct)
        k = max(1 if len(idx) >= 2 else 0, min(len(idx) - 1, k))
        to_valid.update(rng.sample(idx, k))
    return ([it for i, it in enumerate(items) if i not in to_valid],
            [it for i, it in enumerate(items) if i in to_valid])


def _from_labels_file(root: str, labels: str, valid_pct: float | None, seed: int) -> DatasetLayout:
    import csv
    import io
    import posixpath

    try:
        # utf-8-sig: a CSV saved by Excel starts with a byte-order mark, which would hide the first
        # column's name.
        text = storage.read_bytes(labels).decode("utf-8-sig")
    except FileNotFoundError:
        raise LayoutError(f"--labels {labels}: no such file") from None
    except UnicodeDecodeError as e:
        raise LayoutError(f"--labels {labels}: not UTF-8 text ({e})") from None
    table = list(csv.reader(io.StringIO(text)))
    # Names and values are stripped alike: `fname, label` is a header of two columns, not of
    # `fname` and ` label`.
    header = [h.strip() for h in table[0]] if table else []
    # (line number as an editor shows it, the header being 1; the row by column name)
    rows = [(n, dict(zip(header, (v.strip() for v in r), strict=False)))
            for n, r in enumerate(table[1:], start=2) if any(v.strip() for v in r)]
    path_col = next((c for c in PATH_COLUMNS if c in header), None)
    label_col = "label" if "label" in header else None
    if not rows or path_col is None or label_col is None:
        raise LayoutError(f"--labels {labels}: needs a header with an image column ({' | '.join(PATH_COLUMNS)}) "
                          f"and a label column; it has {', '.join(header) or 'nothing'}")
    split_col = next((c for c in SPLIT_COLUMNS if c in header), None)
    if split_col is None and not valid_pct:
        raise LayoutError(f"--labels {labels}: no split or is_valid column; add --valid-pct P to split it")
    if split_col is not None and valid_pct:
        raise LayoutError(f"--valid-pct: --labels {labels} splits the images already (its {split_col} column); drop "
                          "--valid-pct to use it")
    # The images under DATA, by their path relative to it and by that path without its extension
    # (Kaggle's id column names files without one).
    files: dict[str, str] = {}
    bad: list[tuple[str, str]] = []
    for uri in storage.list_files(root, unreadable=bad):
        if is_image_name(uri):
            rel = "/".join(storage.relative_parts(root, uri))
            files[rel] = uri
            files.setdefault(posixpath.splitext(rel)[0], uri)
    train_items, valid_items, plain = [], [], []
    lines_of: dict[str, list[int]] = {}  # image -> the lines naming it (one image, one label, one split)
    for n, row in rows:
        name, label = row.get(path_col) or "", row.get(label_col) or ""
        where = f"{labels} line {n}"
        if not name:
            bad.append((where, "no image named"))
            continue
        uri = files.get(name.lstrip("/"))
        if uri is None:
            bad.append((storage.join(root, name), f"listed in {where} but not found under DATA"))
            continue
        lines_of.setdefault(uri, []).append(n)
        if not label:
            bad.append((uri, f"empty label ({where})"))
            continue
        if split_col is None:
            plain.append((uri, label))
            continue
        value = (row.get(split_col) or "").lower()
        if value in ("valid", "validation", "true", "1", "yes"):
            valid_items.append((uri, label))
        elif value in ("train", "training", "false", "0", "no"):
            train_items.append((uri, label))
        else:
            bad.append((uri, f"{split_col} {value!r} is not train or valid ({where})"))
    twice = {uri: ns for uri, ns in lines_of.items() if len(ns) > 1}
    if twice:
        # (`img1` and `img1.jpg` name one file): it could land in train and in valid, or under two labels
        shown = [f"{uri} (lines {', '.join(map(str, ns))})" for uri, ns in sorted(twice.items(), key=lambda kv: kv[1])]
        raise LayoutError(f"--labels {labels}: {len(twice)} image(s) listed more than once: {'; '.join(shown[:5])}"
                          f"{' ...' if len(shown) > 5 else ''}; list each image once")
    if split_col is None:
        train_items, valid_items = stratified_split(plain, valid_pct, seed)
    classes = sorted({c for _, c in train_items + valid_items})
    # A label becomes a class name, and class names become folder names and model.json's classes,
    # which predict checks: refuse here what it would refuse after a whole training run.
    unsafe = unsafe_class_names(classes)
    if unsafe:
        raise LayoutError(f"--labels {labels}: labels must be usable as folder names, not {', '.join(unsafe)}")
    _two_classes(root, classes)
    if not train_items or not valid_items:
        raise LayoutError(f"--labels {labels}: no {'train' if not train_items else 'valid'} images left "
                          f"({len(bad)} rows could not be used)")
    if split_col is not None:
        # As the folder layout refuses train/ and valid/ with other classes: a class seen only in
        # valid can't be learnt, and one only in train can't be measured.
        in_train, in_valid = {c for _, c in train_items}, {c for _, c in valid_items}
        detail = "; ".join(s for s in (
            f"only in train: {', '.join(sorted(in_train - in_valid))}" if in_train - in_valid else "",
            f"only in valid: {', '.join(sorted(in_valid - in_train))}" if in_valid - in_train else "") if s)
        if detail:
            raise LayoutError(f"--labels {labels}: train and valid rows have different classes ({detail})")
    return DatasetLayout(root=root, classes=classes, train=_split(train_items, classes),
                         valid=_split(valid_items, classes), test=Split(), bad=bad)
