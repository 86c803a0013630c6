"""What `raycat predict` scores: the images under a folder or prefix, or the rows of a manifest,
cut into numbered shards of paths without the driver ever holding them all.

A shard is `SHARD_SIZE` images with a stable id, the unit a scoring actor reads, scores and writes
as one Parquet part, and the unit a resumed run reuses when it holds the same images. It travels
to its scoring actor as one row {shard, payload}: the payload is JSON ({paths, labels, bad}).

- A folder or prefix: the driver streams one listing of its top level (never holding it) and cuts
  it into listing units: each subfolder is one unit, listed (recursively) on its own; the images at
  the top level are cut into ranges of names (after, until], each a unit of its own, so a flat
  prefix of a million images is listed by many threads in parallel (stream_shards). On S3 a bound
  falls every `UNIT_SHARDS` shards of images, and a range lists from its bound on (ListObjectsV2's
  StartAfter), reading only its own pages; a local folder can't be read from a name on, so its
  ranges are fewer and larger (`LOCAL_RANGE_SHARDS`, `MAX_LOCAL_RANGES`), bounded by a sample of
  its names. Shard ids are
  `<unit>-<chunk>`, units numbered subfolders first (sorted), then ranges: the same listing
  always gives the same units, shards and paths, whatever order the folder lists in.
- A manifest (`.csv` or `.parquet` with a `path` column, optional `label`): one thread streams the
  file in record batches and cuts it into shards `m-<chunk>`; a path may be local or s3://, and a
  relative one is relative to the manifest's folder. A ten-million-row table is never listed.

Labels: in a folder tree whose top level holds only folders, one of them named after a class,
every top-level folder must be a class (anything else is a usage error, naming it), and an image
is labelled by its top-level folder. Otherwise an image is labelled when the folder it sits in is
named after a class. A manifest's `label` column names the class; a row with an unknown label is
skipped and reported, as an unreadable image is.
"""

from __future__ import annotations

import heapq
import json
import math
import posixpath
import zlib
from dataclasses import dataclass
from typing import Iterator

from raycat.edge import storage
from raycat.edge.layout import IMAGE_EXTENSIONS, is_image_name
from raycat.errors import BadInput

SHARD_SIZE = 512  # images a shard: one actor call, one Parquet part, the unit of resume
# Shards in an S3 range of a flat prefix (4,096 images, about 4 pages of a listing): big enough
# that a range's first request is small beside its pages, small enough that a million images make
# 245 units.
UNIT_SHARDS = 8
# A local folder can't be read from a name on: each range reads the whole directory (about 0.5 us
# an entry) before it keeps its own names (about 2 us each). So a local range holds at least
# 131,072 images (256 shards), and there are at most 8: a folder is read 1 + ceil(n / 131,072)
# times, at most 9.
LOCAL_RANGE_SHARDS = 256
MAX_LOCAL_RANGES = 8
# Names sampled to place a local folder's range bounds: 64 a range, so ranges come out within
# about 1/8 of each other's size.
LOCAL_SAMPLE = 64 * MAX_LOCAL_RANGES
MANIFEST_SUFFIXES = (".csv", ".parquet")


class ListingError(BadInput):
    """IMAGES can't be scored (exit 2); the message names it."""


@dataclass(frozen=True)
class Source:
    """What listing a unit needs: IMAGES, the model's classes and how labels are read."""

    images: str
    classes: tuple[str, ...]
    labelled_tree: bool = False  # labels from the top-level folder (see the module docstring)


def listing_threads(n_units: int, images: str) -> int:
    """Units listed at once (threads of the driver). On object storage a listing waits on
    requests: up to 8 units side by side. A local folder lists tens of thousands of entries a
    second: two, so one's disk waits overlap the other's work."""
    return max(1, min(n_units, 8 if storage.is_s3(images) else 2))


def stream_shards(units: list[dict], source: Source, ahead: int = 16) -> Iterator[dict]:
    """The shard rows of every unit, as the units are listed (by listing_threads threads), in no
    fixed order; at most `ahead` rows wait to be taken, so memory stays flat however many images
    there are. An error listing a unit is raised here, in the caller's thread.

    The listing threads are daemons and never block for long: every put gives up once the
    consumer is gone (the generator closed, or the process exiting after a failure), so a failed
    run ends with its exit status instead of waiting on a full queue nobody reads."""
    import queue
    import threading

    rows: queue.Queue = queue.Queue(maxsize=ahead)
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for u in units:
        todo.put(u)
    done = object()
    stop = threading.Event()
    n_threads = listing_threads(len(units), source.images)
    left = [n_threads]
    lock = threading.Lock()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                rows.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def lister() -> None:
        try:
            while not stop.is_set():
                try:
                    unit = todo.get_nowait()
                except queue.Empty:
                    break
                for row in list_unit(unit, source):
                    if not put(row):
                        return
        except BaseException as e:  # noqa: BLE001 - raised in the consumer's thread
            put(e)
            return
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            put(done)

    for i in range(n_threads):
        threading.Thread(target=lister, name=f"raycat-listing-{i}", daemon=True).start()
    try:
        while (row := rows.get()) is not done:
            if isinstance(row, BaseException):
                raise row
            yield row
    finally:
        stop.set()


def is_manifest(images: str) -> bool:
    return str(images).lower().endswith(MANIFEST_SUFFIXES) and not storage.is_dir(images)


def unit_row(index: int, kind: str, name: str = "", after: str = "", until: str = "", entries: int = 0) -> dict:
    """A listing unit: every unit has every field.

    kind "dir": the folder `name` under IMAGES, recursively; "files": the images at the top level
    whose names lie in (after, until] ("" leaves that end open), `entries` the files and folders
    the range held when it was cut (0: not known), which sizes its last page of an S3 listing;
    "manifest": the manifest IMAGES.
    """
    return {"unit": index, "kind": kind, "name": name, "after": after, "until": until, "entries": entries}


def plan_listing(images: str, classes: list[str]) -> tuple[Source, list[dict]]:
    """(the source, its listing units) for IMAGES; errors before any cluster time. The driver keeps
    the units (one per subfolder, one per few thousand top-level images), never the paths."""
    if is_manifest(images):
        if not storage.exists(images):
            raise ListingError(f"IMAGES {images}: no such manifest")
        return Source(images, tuple(classes)), [unit_row(0, "manifest", images)]
    if not storage.is_dir(images):
        raise ListingError(f"IMAGES {images}: no such folder (or a manifest .csv/.parquet with a path column)")
    root = storage.absolute(images)
    try:
        dirs, ranges = _top_level(root)
    except OSError as e:  # IMAGES itself can't be read (its subfolders are skipped and reported instead)
        raise ListingError(f"IMAGES {images}: can't be read ({e.strerror or type(e).__name__})") from None
    labelled = not ranges and bool(set(dirs) & set(classes))
    if labelled:
        # (a folder that can't be read, a volume's lost+found, is no label: its unit reports it skipped)
        unknown = [d for d in sorted(set(dirs) - set(classes)) if storage.can_list(storage.join(root, d))]
        if unknown:
            raise ListingError(f"IMAGES {images}: labelled folders {', '.join(unknown)} are not among the model's "
                               f"classes ({', '.join(classes)})")
    units = [unit_row(i, "dir", n) for i, n in enumerate(dirs)]
    units += [unit_row(len(dirs) + i, "files", after=a, until=u, entries=e) for i, (a, u, e) in enumerate(ranges)]
    if not units:
        raise ListingError(f"IMAGES {images}: no images found (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return Source(root, tuple(classes), labelled), units


def _top_level(root: str) -> tuple[list[str], list[tuple[str, str, int]]]:
    """(the top level's folders, sorted; the (after, until, entries) ranges its images are cut into),
    from one pass over a listing that is streamed, never held, its types as the listing gave them."""
    dirs: list[str] = []
    n = 0  # images at the top level

    def entries():
        """(name, is an image) for every entry, in the listing's order; folders noted on the way."""
        nonlocal n
        for name, is_folder in storage.scan_dir(root):
            hidden = name.startswith(".")
            if is_folder and not hidden:
                dirs.append(name)
            image = not is_folder and not hidden and is_image_name(name)
            n += image
            yield name, image

    if storage.is_s3(root):
        ranges = _key_ranges(entries(), UNIT_SHARDS * SHARD_SIZE)
    else:
        # Whatever order the directory lists in, the same sample: the names of smallest hash.
        sample = sorted(heapq.nsmallest(LOCAL_SAMPLE, (name for name, image in entries() if image), key=_name_hash))
        k = min(MAX_LOCAL_RANGES, math.ceil(n / (LOCAL_RANGE_SHARDS * SHARD_SIZE)))
        bounds = ["", *(sample[i * len(sample) // k] for i in range(1, k)), ""]
        ranges = [(bounds[i], bounds[i + 1], 0) for i in range(k)]
    return sorted(dirs), ranges


def _name_hash(name: str) -> tuple[int, str]:
    return zlib.crc32(name.encode("utf-8", "surrogateescape")), name


def _key_ranges(entries, step: int) -> list[tuple[str, str, int]]:
    """(after, until, entries) ranges of `step` images each from (name, is an image) in key order
    (S3's), each counting the entries it holds (files and folders, images or not). The last range
    is left open, for files added since."""
    ranges, after, images, since = [], "", 0, 0
    for name, image in entries:
        since += 1
        if image:
            images += 1
            if images % step == 0:
                ranges.append((after, name, since))
                after, since = name, 0
    if images % step:
        ranges.append((after, "", since))
    elif ranges:
        ranges[-1] = (ranges[-1][0], "", ranges[-1][2] + since)
    return ranges


def _label(source: Source, index: dict[str, int], parts: list[str]) -> int:
    if source.labelled_tree:
        return index[parts[0]]
    return index.get(parts[-2], -1) if len(parts) >= 2 else -1


def shard_row(shard: str, paths: list[str], labels: list[int], bad: list[tuple[str, str]]) -> dict:
    return {"shard": shard, "payload": json.dumps({"paths": paths, "labels": labels, "bad": bad})}


def shard_of(row: dict) -> tuple[str, list[str], list[int], list[tuple[str, str]]]:
    d = json.loads(row["payload"])
    return row["shard"], d["paths"], d["labels"], [tuple(b) for b in d["bad"]]


def _shards(index: int, paths: list[str], labels: list[int], bad: list[tuple[str, str]] = ()) -> list[dict]:
    """A unit's shard rows; its `bad` entries go with the first (a unit of bad entries alone is one shard)."""
    starts = range(0, max(len(paths), 1 if bad else 0), SHARD_SIZE)
    return [shard_row(f"{index:05d}-{i // SHARD_SIZE:06d}", paths[i:i + SHARD_SIZE], labels[i:i + SHARD_SIZE],
                      list(bad) if i == 0 else []) for i in starts]


def list_unit(row: dict, source: Source):
    """One listing unit -> its shard rows. (A shard an earlier run scored is listed too: its
    scoring actor reuses the summary if the shard still holds the same images.)"""
    kind, index = row["kind"], int(row["unit"])
    if kind == "manifest":
        yield from read_manifest(source)
        return
    if kind == "files":
        names = sorted(n for n in storage.scan_files(source.images, row["after"] or None, row["until"] or None,
                                                     int(row["entries"]) or None)
                       if not n.startswith(".") and is_image_name(n))
        folder = storage.join(source.images, "")  # IMAGES and a separator: each path is that and a name
        # IMAGES' own images sit in no folder under it, so none is labelled (see the module docstring).
        yield from _shards(index, [folder + n for n in names], [-1] * len(names))
        return
    unreadable: list[tuple[str, str]] = []
    uris = [u for u in storage.list_files(storage.join(source.images, row["name"]), outside=source.images,
                                          unreadable=unreadable) if is_image_name(u)]
    classes = {c: i for i, c in enumerate(source.classes)}
    # Folders that can't be read travel in the first shard's `bad`: skipped.csv lists them as it
    # lists unreadable files.
    yield from _shards(index, uris, [_label(source, classes, storage.relative_parts(source.images, u)) for u in uris],
                       unreadable)


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
