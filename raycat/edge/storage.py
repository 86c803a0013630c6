"""The one place that opens paths and URIs: local folders and s3:// (any S3-compatible store).

S3 is configured by the standard AWS variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), which
pyarrow and boto3 read themselves; each process makes one client of each and keeps it. Listings
give each entry's type as the listing returned it (os.scandir's, S3's files and common prefixes):
no stat per file. Every write is atomic: a file appears under its final name only when it is
complete (local: write a temporary sibling, then rename; S3: a single PUT, which S3 makes visible
only once whole). Writes to S3 retry with exponential backoff, so a store that blinks for a few
seconds does not fail a job.
"""

from __future__ import annotations

import atexit
import heapq
import os
import posixpath
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Callable, TypeVar

import pyarrow.fs as pafs

T = TypeVar("T")

# Seconds to wait between retries of a failed S3 call: 0.5, 1, 2, 4, 8 (about 15 s in all).
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0)


class StorageError(RuntimeError):
    """A read or write failed after its retries; the message names the URI."""


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def join(uri: str, *parts: str) -> str:
    if is_s3(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def absolute(uri: str) -> str:
    """A local path made absolute (list_files returns absolute paths); an s3:// URI without a
    trailing slash. Anything that cuts listed paths relative to a root must use this root."""
    uri = str(uri)
    return uri.rstrip("/") if is_s3(uri) else os.path.abspath(uri)


def basename(uri: str) -> str:
    return posixpath.basename(str(uri).rstrip("/"))


def relative_parts(root: str, uri: str) -> list[str]:
    """The path components of a listed `uri` below `root` (made absolute, as list_files' URIs are)."""
    rel = str(uri)[len(absolute(root)) + 1:]
    return rel.replace("\\", "/").split("/")


# One S3 client of each kind per process, made on first use and kept: a client holds its connection
# pool and credentials, and making one per call (once per file listed or read) cost more than the
# call. Keyed by the AWS_* settings it was made from, so a process whose settings change (tests do)
# gets a client for the new ones, and by the process id, so a forked child never shares its
# parent's sockets.
_CLIENTS: dict[tuple, object] = {}
_CLIENTS_LOCK = threading.Lock()
_S3_SETTINGS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE",
                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# Dropped at exit before pyarrow finalizes its S3 support (pyarrow.fs, imported above, registered
# that first, so it runs after this): a filesystem that outlives it can crash or hang the exit
# (apache/arrow#36346, #50188).
atexit.register(_CLIENTS.clear)


def _client(kind: str, make: Callable[[], T]) -> T:
    key = (kind, os.getpid(), *(os.environ.get(k) for k in _S3_SETTINGS))
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            _CLIENTS[key] = make()
        return _CLIENTS[key]


def _s3_endpoint() -> tuple[str | None, str | None]:
    """(endpoint, region) from the environment; an explicit endpoint (moto, MinIO) needs no region
    lookup, so it gets the configured region or us-east-1."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    return endpoint, region if endpoint else None


def _s3_filesystem() -> pafs.S3FileSystem:
    """This process's pyarrow S3 filesystem. Retries inside pyarrow cover short blips; ours cover
    longer outages."""

    def make() -> pafs.S3FileSystem:
        endpoint, region = _s3_endpoint()
        if not endpoint:
            return pafs.S3FileSystem()
        return pafs.S3FileSystem(endpoint_override=endpoint, scheme="https" if endpoint.startswith("https") else "http",
                                 region=region)

    return _client("pyarrow", make)


def _s3_client():
    """This process's boto3 S3 client, for what pyarrow's filesystem can't do: list a folder page by
    page, from a given key on (ListObjectsV2's StartAfter), holding one page at a time."""

    def make():
        import boto3
        from botocore.config import Config

        endpoint, region = _s3_endpoint()
        config = Config(retries={"mode": "standard", "max_attempts": 3},  # pyarrow's default; ours on top
                        s3={"addressing_style": "path"} if endpoint else None)  # as pyarrow addresses an endpoint
        return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)

    return _client("boto3", make)


_LOCAL_FILESYSTEM = pafs.LocalFileSystem()  # holds no state: one serves every local path


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or an s3:// URI."""
    uri = str(uri)
    if is_s3(uri):
        return _s3_filesystem(), uri[len("s3://"):].rstrip("/")
    return _LOCAL_FILESYSTEM, os.path.abspath(uri)


def ray_storage(uri: str) -> dict:
    """`storage_path` (and `storage_filesystem` for S3) for Ray Train's and Tune's RunConfig."""
    fs, path = filesystem(uri)
    return {"storage_path": path, "storage_filesystem": fs} if is_s3(uri) else {"storage_path": path}


# Errors worth another try: the store or the network is briefly away or busy (the AWS SDK's error
# names, as pyarrow reports them). A missing bucket or a denied request fails at once.
TRANSIENT = ("NETWORK_CONNECTION", "SLOW_DOWN", "INTERNAL_FAILURE", "SERVICE_UNAVAILABLE", "REQUEST_TIMEOUT",
             "HTTP status 500", "HTTP status 502", "HTTP status 503", "HTTP status 504", "curlCode")


class S3CallError(OSError):
    """A boto3 call's failure, raised as an OSError as pyarrow's are, saying whether it is worth
    another try: `retrying` treats both clients' errors alike."""

    def __init__(self, message: str, transient: bool):
        super().__init__(message)
        self.transient = transient


def _boto(fn: Callable[[], T]) -> T:
    from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    try:
        return fn()
    except ClientError as e:
        err, status = e.response.get("Error", {}), e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = err.get("Code", "")
        raise S3CallError(f"{code}: {err.get('Message', '')} (HTTP status {status})",
                          status >= 500 or code in ("SlowDown", "RequestTimeout")) from e
    except (BotoConnectionError, HTTPClientError) as e:  # refused, reset, timed out
        raise S3CallError(str(e), True) from e
    except BotoCoreError as e:  # no credentials, a bad endpoint: another try won't help
        raise S3CallError(str(e), False) from e


def is_transient(e: BaseException) -> bool:
    return getattr(e, "transient", False) or any(t in str(e) for t in TRANSIENT)


def retrying(what: str, fn: Callable[[], T], retries: bool = True) -> T:
    """Run fn, retrying transient I/O errors with backoff when `retries`; a final failure is a
    StorageError naming `what`. Every S3 call in raycat goes through here."""
    delays = RETRY_DELAYS_S if retries else ()
    for attempt in range(len(delays) + 1):
        try:
            return fn()
        except FileNotFoundError:
            raise
        except OSError as e:  # pyarrow's I/O errors are OSErrors
            if attempt == len(delays) or not is_transient(e):
                raise StorageError(f"{what}: {e}") from e
            time.sleep(delays[attempt])
    raise AssertionError("unreachable")


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return retrying(f"stat {uri}", lambda: fs.get_file_info(path).type != pafs.FileType.NotFound, is_s3(uri))


def is_dir(uri: str) -> bool:
    fs, path = filesystem(uri)
    return retrying(f"stat {uri}", lambda: fs.get_file_info(path).type == pafs.FileType.Directory, is_s3(uri))


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)

    def read() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()

    return retrying(f"read {uri}", read, is_s3(uri))


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


# Objects a browser opens from a (presigned) URL: without their type it downloads them instead.
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".png": "image/png", ".json": "application/json",
                 ".csv": "text/csv; charset=utf-8"}


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file atomically: readers see the old file or the new one, never a part. An S3
    object gets the Content-Type its extension says (report.html opens in a browser)."""
    if is_s3(uri):
        fs, path = filesystem(uri)
        kind = CONTENT_TYPES.get(os.path.splitext(path)[1].lower())

        def put() -> None:
            with fs.open_output_stream(path, metadata={"Content-Type": kind} if kind else None) as f:
                f.write(data)

        retrying(f"write {uri}", put, True)
        return
    path = os.path.abspath(uri)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".part", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_mapping(uri: str, flag: str) -> dict:
    """A JSON or YAML file (by extension) holding a mapping; errors name `flag` and the file."""
    import json

    from raycat.errors import ConfigError

    try:
        text = read_text(uri)
    except FileNotFoundError:
        raise ConfigError(f"{flag}: no such file {uri}") from None
    kind = "YAML" if str(uri).endswith((".yaml", ".yml")) else "JSON"
    try:
        if kind == "YAML":
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error becomes a usage error naming the file
        raise ConfigError(f"{flag}: {uri} is not valid {kind}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{flag}: {uri} must hold a mapping of names to values")
    return data


def list_files(uri: str, outside: str | None = None, unreadable: list | None = None) -> list[str]:
    """Every file under a folder, recursively, as URIs in sorted order.

    Local trees are walked following symlinks, but each real folder is entered once, so a symlink
    loop ends instead of recursing for ever. Hidden files and folders (".name") are left out.
    With `outside` (a folder holding `uri`), a symlink into `outside` but out of `uri` is not
    followed: parallel listings of a tree's parts then never walk each other's folders. A local
    folder that can't be read (a volume's root-owned lost+found) is left out, and (path, reason)
    goes to `unreadable`, as an unreadable file is skipped and reported, never fatal.
    """
    uri = str(uri)
    if is_s3(uri):
        fs, path = filesystem(uri)
        infos = retrying(
            f"list {uri}",
            lambda: fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)),
            True,
        )
        out = []
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            rel = info.path[len(path):].lstrip("/")
            if any(p.startswith(".") for p in rel.split("/")):
                continue
            out.append("s3://" + info.path)
        return sorted(out)
    root = os.path.abspath(uri)
    own, fence = os.path.realpath(root), os.path.realpath(outside) if outside else None
    inside = lambda real, top: real == top or real.startswith(top.rstrip("/") + "/")  # noqa: E731
    out, seen, todo = [], set(), [root]
    while todo:  # depth first, folders in sorted order, as os.walk goes (which path of a linked folder is kept)
        folder = todo.pop()
        real = os.path.realpath(folder)
        if real in seen or (fence and inside(real, fence) and not inside(real, own)):
            continue
        seen.add(real)
        subfolders = []
        for name, is_folder in _local_entries(folder, unreadable=unreadable):
            if not name.startswith("."):
                (subfolders if is_folder else out).append(os.path.join(folder, name))
        todo += sorted(subfolders, reverse=True)
    return sorted(out)


# Keys a ListObjectsV2 page holds at most (S3's own ceiling; tests lower it to cross pages).
S3_PAGE_KEYS = 1000


def _local_entries(path: str, after: str | None = None, until: str | None = None,
                   unreadable: list | None = None) -> Iterator[tuple[str, bool]]:
    """(name, is_folder) for the files and folders in a local folder with after < name <= until, types
    from os.scandir (the directory's own record: a stat only for a symlink, which is followed). A
    folder that is gone yields nothing; one that can't be read (no permission, an I/O error) yields
    nothing too, and with `unreadable` its (path, reason) is appended there, else it raises."""
    try:
        entries = os.scandir(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        if unreadable is None:
            raise
        unreadable.append((path, f"unreadable folder: {e.strerror or type(e).__name__}"))
        return
    with entries:
        for e in entries:
            name = e.name
            if (after is not None and name <= after) or (until is not None and name > until):
                continue
            try:
                if e.is_dir():
                    yield name, True
                elif e.is_file():  # not a broken link, a socket, a pipe
                    yield name, False
            except OSError:  # gone between the listing and the look
                continue


def _s3_pages(uri: str, after: str | None = None, expected: int | None = None) -> Iterator[list[tuple[str, bool]]]:
    """The pages of a one-level listing of the folder `uri` (Delimiter "/") from the name `after` on:
    each a list of (name, is_folder) in key order, a folder's name ending in "/" as its key does.
    `expected` (entries still to come, if known) sizes the pages so that the last one ends there."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    prefix = key.strip("/") + "/" if key.strip("/") else ""
    request = {"Bucket": bucket, "Prefix": prefix, "Delimiter": "/"}
    if prefix + (after or ""):  # past the folder's own marker object (key `prefix`), if it has one
        request["StartAfter"] = prefix + (after or "")
    client = _s3_client()
    while True:
        request["MaxKeys"] = expected if expected is not None and 0 < expected < S3_PAGE_KEYS else S3_PAGE_KEYS
        page = retrying(f"list {uri}", lambda: _boto(lambda: client.list_objects_v2(**request)), True)
        # Files and folders come as two lists, each in key order: merged, the page is in key order.
        entries = list(heapq.merge(((o["Key"][len(prefix):], False) for o in page.get("Contents", ())),
                                   ((p["Prefix"][len(prefix):], True) for p in page.get("CommonPrefixes", ()))))
        yield entries
        if expected is not None:
            expected -= len(entries)
        if not page.get("IsTruncated"):
            return
        request["ContinuationToken"] = page["NextContinuationToken"]


def can_list(uri: str) -> bool:
    """Whether a folder's entries can be read (False for a local folder without permission, say);
    an S3 prefix is taken to be listable (a denied listing fails the job, naming it)."""
    if is_s3(str(uri)):
        return True
    unreadable: list = []
    for _ in _local_entries(os.path.abspath(uri), unreadable=unreadable):
        break
    return not unreadable


def scan_dir(uri: str) -> Iterator[tuple[str, bool]]:
    """(name, is_folder) for each file and folder directly inside the folder `uri`, streamed as the
    listing returns them (a flat folder of a million images is never held whole), with the type the
    listing gave (os.scandir's; S3's files and common prefixes): no stat per entry. Hidden names
    included; a broken link or a socket left out; a missing folder yields nothing. Order: S3's key
    order; a local folder's own order, which is not sorted."""
    uri = str(uri)
    if not is_s3(uri):
        yield from _local_entries(os.path.abspath(uri))
        return
    for page in _s3_pages(uri):
        for name, is_folder in page:
            name = name.rstrip("/")
            if name:  # not an empty name (a key such as "prefix//x")
                yield name, is_folder


def scan_files(uri: str, after: str | None = None, until: str | None = None, expected: int | None = None
               ) -> Iterator[str]:
    """Names of the files directly inside the folder `uri` with after < name <= until (None: no bound;
    str order, which is S3's key order), typed by the listing as scan_dir's are.

    S3 reads only that range: the listing starts after `after` (StartAfter) and stops at `until`;
    `expected`, the entries (files and folders) the range held when it was cut, sizes the last page
    to end there. A local folder can't be read from a name on: it is read whole and the names
    outside the range are dropped. Order: S3's key order; a local folder's own."""
    uri = str(uri)
    if not is_s3(uri):
        yield from (name for name, is_folder in _local_entries(os.path.abspath(uri), after, until) if not is_folder)
        return
    for page in _s3_pages(uri, after, expected):
        for name, is_folder in page:
            if until is not None and name > until:
                return
            if name and not is_folder:
                yield name
        if until is not None and page and page[-1][0] >= until:  # the next page starts past `until`
            return


def list_dir(uri: str) -> list[str]:
    """Names of the entries directly inside a folder (files and folders), sorted."""
    fs, path = filesystem(uri)
    infos = retrying(
        f"list {uri}",
        lambda: fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True)),
        is_s3(uri),
    )
    return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)


def delete_tree(uri: str) -> None:
    fs, path = filesystem(uri)
    kind = retrying(f"stat {uri}", lambda: fs.get_file_info(path).type, is_s3(uri))
    if kind == pafs.FileType.NotFound:
        return
    if kind == pafs.FileType.File:
        retrying(f"delete {uri}", lambda: fs.delete_file(path), is_s3(uri))
    else:
        retrying(f"delete {uri}", lambda: fs.delete_dir(path), is_s3(uri))


def upload_tree(local_dir: str, uri: str) -> None:
    """Copy a local folder's files to a folder URI, each file written atomically."""
    for dirpath, _, filenames in os.walk(local_dir):
        for name in filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, local_dir).replace(os.sep, "/")
            with open(full, "rb") as f:
                write_bytes(join(uri, *rel.split("/")), f.read())


def staging_uri(uri: str) -> str:
    """A fresh sibling of `uri` to build a folder in before it replaces `uri` (see replace_tree)."""
    return uri.rstrip("/") + f".staging-{uuid.uuid4().hex[:8]}"


def replace_tree(staged: str, uri: str) -> None:
    """Make the folder `staged` the folder `uri`, dropping what `uri` held before.

    Local: two renames, so a crash leaves the old folder or the new one, never a mix. S3 has no
    rename: the old prefix is deleted, the staged objects copied over, then the staging prefix
    deleted; a crash in that window leaves a partial folder *and* the complete staging prefix,
    and the next run replaces both.
    """
    if not is_s3(uri):
        import shutil

        old = None
        if os.path.exists(uri):
            old = uri.rstrip("/") + f".old-{uuid.uuid4().hex[:8]}"
            os.replace(uri, old)
        os.replace(staged, uri)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return
    delete_tree(uri)
    fs, stage_path = filesystem(staged)
    _, final_path = filesystem(uri)
    staged_files = retrying(f"list {staged}", lambda: fs.get_file_info(pafs.FileSelector(stage_path, recursive=True)),
                          True)
    for info in staged_files:
        if info.type == pafs.FileType.File:
            dst = final_path + info.path[len(stage_path):]
            retrying(f"copy to s3://{dst}", lambda s=info.path, d=dst: fs.copy_file(s, d), True)
    delete_tree(staged)


def publish_tree(local_dir: str, uri: str) -> None:
    """Replace the folder at `uri` with the contents of `local_dir` (staged, then replace_tree)."""
    stage = staging_uri(uri)
    if is_s3(uri):
        upload_tree(local_dir, stage)
    else:
        import shutil

        os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
        shutil.copytree(local_dir, stage)
    replace_tree(stage, uri)


def remove_stale_staging(parent: str) -> None:
    """Delete staging folders a crashed run left in `parent`."""
    if not exists(parent):
        return
    for name in list_dir(parent):
        if ".staging-" in name or ".old-" in name:
            delete_tree(join(parent, name))


def local_copy(uri: str, dest_dir: str | None = None) -> str:
    """A local path holding the file or folder at `uri` (the path itself when already local)."""
    if not is_s3(uri):
        return os.path.abspath(uri)
    dest_dir = dest_dir or tempfile.mkdtemp(prefix="raycat-")
    if is_dir(uri):
        for f in list_files(uri):
            rel = f[len(uri.rstrip("/")) + 1:]
            target = os.path.join(dest_dir, *rel.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as out:
                out.write(read_bytes(f))
        return dest_dir
    target = os.path.join(dest_dir, basename(uri))
    with open(target, "wb") as out:
        out.write(read_bytes(uri))
    return target


def copy_tree(src: str, dst: str) -> None:
    """Copy every file under the folder `src` to the same place under `dst`, keeping `src`: for a
    move that must be restartable where a store has no rename (see predict_job.publish_predictions)."""
    if not is_s3(dst):
        import shutil

        shutil.copytree(src, dst, dirs_exist_ok=True)
        return
    fs, src_path = filesystem(src)
    _, dst_path = filesystem(dst)
    infos = retrying(f"list {src}", lambda: fs.get_file_info(pafs.FileSelector(src_path, recursive=True)), True)
    for info in infos:
        if info.type == pafs.FileType.File:
            target = dst_path + info.path[len(src_path):]
            retrying(f"copy to s3://{target}", lambda s=info.path, d=target: fs.copy_file(s, d), True)
