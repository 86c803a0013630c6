"""What `raycat predict` scores: the images under a folder or prefix, or the rows of a manifest,
cut into numbered shards of paths without the driver ever holding them all.

A shard is `SHARD_SIZE` images with a stable id, the unit a scoring actor reads, scores and writes
as one Parquet part, and the unit a resumed run skips when its part is already written. It travels
through Ray Data as one row {shard, payload}: the payload is JSON ({paths, labels, bad}), so rows
of any length and any number of bad entries share one Arrow schema.

- A folder or prefix: the driver lists its top level only; each subfolder is listed (recursively)
  by its own Ray task, in parallel, and cut into shards there. Shard ids are
  `<top-level entry index>-<chunk>`, so the same tree always gives the same shards.
- A manifest (`.csv` or `.parquet` with a `path` column, optional `label`): one task streams the
  file in record batches and cuts it into shards `m-<chunk>`; a path may be local or s3://, and a
  relative one is relative to the manifest's folder. A ten-million-row table is never listed.

Labels: in a folder tree whose top level holds only folders, one of them named after a class,
every top-level folder must be a class (anything else is a usage error, naming it), and an image
is labelled by its top-level folder. Otherwise an image is labelled when the folder it sits in is
named after a class. A manifest's `label` column names the class; a row with an unknown label is
skipped and reported, as an unreadable image is.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass

from raycat import storage
from raycat.errors import BadInput
from raycat.layout import IMAGE_EXTENSIONS, is_image_name

SHARD_SIZE = 512  # images a shard: one actor call, one Parquet part, the unit of resume
MANIFEST_SUFFIXES = (".csv", ".parquet")


class ListingError(BadInput):
    """IMAGES can't be scored (exit 2); the message names it."""


@dataclass(frozen=True)
class Source:
    """What the listing tasks need: IMAGES, the model's classes and how labels are read."""

    images: str
    classes: tuple[str, ...]
    labelled_tree: bool = False  # labels from the top-level folder (see the module docstring)


def is_manifest(images: str) -> bool:
    return str(images).lower().endswith(MANIFEST_SUFFIXES) and not storage.is_dir(images)


def plan_listing(images: str, classes: list[str]) -> tuple[Source, list[dict]]:
    """(the source, one listing unit per top-level entry) for IMAGES; errors before any cluster time.

    A unit is {"unit": index, "name": entry, "kind": "dir" | "files" | "manifest"}; loose files at
    the top level make one "files" unit listed by the driver itself (there is one level of them).
    """
    if is_manifest(images):
        if not storage.exists(images):
            raise ListingError(f"IMAGES {images}: no such manifest")
        return Source(images, tuple(classes)), [{"unit": 0, "name": images, "kind": "manifest"}]
    if not storage.is_dir(images):
        raise ListingError(f"IMAGES {images}: no such folder (or a manifest .csv/.parquet with a path column)")
    root = storage.absolute(images)
    names = [n for n in storage.list_dir(root) if not n.startswith(".")]
    dirs = [n for n in names if storage.is_dir(storage.join(root, n))]
    files = [n for n in names if n not in dirs and is_image_name(n)]
    labelled = not files and bool(set(dirs) & set(classes))
    if labelled:
        unknown = sorted(set(dirs) - set(classes))
        if unknown:
            raise ListingError(f"IMAGES {images}: labelled folders {', '.join(unknown)} are not among the model's "
                               f"classes ({', '.join(classes)})")
    units = [{"unit": i, "name": n, "kind": "dir"} for i, n in enumerate(dirs)]
    if files:
        units.append({"unit": len(dirs), "name": "", "kind": "files"})
    if not units:
        raise ListingError(f"IMAGES {images}: no images found (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return Source(root, tuple(classes), labelled), units


def _label(source: Source, parts: list[str]) -> int:
    index = {c: i for i, c in enumerate(source.classes)}
    if source.labelled_tree:
        return index[parts[0]]
    return index.get(parts[-2], -1) if len(parts) >= 2 else -1


def shard_row(shard: str, paths: list[str], labels: list[int], bad: list[tuple[str, str]]) -> dict:
    return {"shard": shard, "payload": json.dumps({"paths": paths, "labels": labels, "bad": bad})}


def shard_of(row: dict) -> tuple[str, list[str], list[int], list[tuple[str, str]]]:
    d = json.loads(row["payload"])
    return row["shard"], d["paths"], d["labels"], [tuple(b) for b in d["bad"]]


def _shards(unit: int, paths: list[str], labels: list[int]) -> list[dict]:
    return [shard_row(f"{unit:05d}-{i // SHARD_SIZE:06d}", paths[i:i + SHARD_SIZE], labels[i:i + SHARD_SIZE], [])
            for i in range(0, len(paths), SHARD_SIZE)]


def list_unit(row: dict, source: Source, skip: frozenset = frozenset()):
    """Ray Data flat_map: one listing unit -> its shard rows, but those whose id is in `skip`
    (scored by an earlier run)."""
    for shard in _unit_shards(row, source):
        if shard["shard"] not in skip:
            yield shard


def _unit_shards(row: dict, source: Source):
    kind, unit = row["kind"], int(row["unit"])
    if kind == "manifest":
        yield from read_manifest(source)
        return
    if kind == "files":
        uris = [storage.join(source.images, n) for n in storage.list_dir(source.images)
                if not n.startswith(".") and is_image_name(n)]
        uris = [u for u in uris if not storage.is_dir(u)]
    else:
        uris = [u for u in storage.list_files(storage.join(source.images, row["name"]), outside=source.images)
                if is_image_name(u)]
    labels = [_label(source, storage.relative_parts(source.images, u)) for u in uris]
    yield from _shards(unit, uris, labels)


def read_manifest(source: Source):
    """Shard rows of a manifest, streamed in record batches; bad rows travel in their shard's `bad`."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    uri = source.images
    fs, path = storage.filesystem(uri)
    base = posixpath.dirname(uri) if storage.is_s3(uri) else storage.absolute(uri).rsplit("/", 1)[0]
    index = {c: i for i, c in enumerate(source.classes)}
    if uri.lower().endswith(".parquet"):
        pf = pq.ParquetFile(fs.open_input_file(path))
        names = pf.schema_arrow.names
        batches = pf.iter_batches(batch_size=SHARD_SIZE, columns=[c for c in ("path", "label") if c in names])
    else:
        opts = pacsv.ConvertOptions(column_types={"path": pa.string(), "label": pa.string()})
        reader = pacsv.open_csv(fs.open_input_stream(path), convert_options=opts)
        names = reader.schema.names
        batches = reader
    if "path" not in names:
        raise ListingError(f"IMAGES {uri}: a manifest needs a `path` column (it has {', '.join(names)})")
    paths, labels, bad, chunk, row = [], [], [], 0, 0
    for b in batches:
        d = b.to_pydict()
        for i, p in enumerate(d["path"]):
            row += 1
            label = d["label"][i] if "label" in d else None
            if not p:
                bad.append((f"{uri} row {row}", "empty path"))
                continue
            p = p if storage.is_s3(p) or p.startswith("/") else f"{base}/{p}"
            if label not in (None, "") and label not in index:
                bad.append((p, f"unknown label {label!r} (the model's classes: {', '.join(source.classes)})"))
                continue
            paths.append(p)
            labels.append(index[label] if label not in (None, "") else -1)
            if len(paths) == SHARD_SIZE:
                yield shard_row(f"m-{chunk:07d}", paths, labels, bad)
                paths, labels, bad, chunk = [], [], [], chunk + 1
    if paths or bad:
        yield shard_row(f"m-{chunk:07d}", paths, labels, bad)
