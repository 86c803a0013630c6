"""Scale: `raycat predict` over 20,000 and 200,000 small generated images, 1 in 100 unreadable, from a
folder and from a Parquet manifest of the same files: img/s, the driver's peak RSS (flat), the
fixed cost, and every image accounted for (predicted + skipped = total, each path once, none both).

Each run is a `raycat predict` of its own (a child process, so its peak RSS is its own) on one Ray
instance started first (the fixed cost of Ray's start is reported apart). The model is a resnet18
with random weights at 32 px: the load, not the accuracy.

With --listing, the listing alone, before and after flat folders were cut into ranges: a flat
folder of 200,000 empty files (and of 20,000, for the driver's memory) and a flat prefix on a
moto S3 server on loopback (smaller: moto lists a page in time linear in the bucket, and stores
some 250 objects a second). "Before" is raycat/shell/listing.py and storage.py at --baseline-ref, read
with `git show` into modules of their own; "after" is this checkout. Each run is a child process
of its own, which plans the units (the driver) and hands them to a pool of --procs processes
started before the clock (the listing tasks; Ray's own fixed cost left out), so its peak RSS is
the driver's.

usage: python bench/predict_scale.py [--images N ...] [--workers W]
       python bench/predict_scale.py --listing [--files N] [--small-files N] [--s3-files N ...] [--repeats R]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from results import machine, write_random_model, write_section  # noqa: E402

from raycat.datasets import SHAPES, draw_shape  # noqa: E402

CLASSES = list(SHAPES[:4])


def make_images(root: str, n: int, seed: int = 0) -> tuple[int, int]:
    """n JPEGs of 48x40 in 4 class folders (100 distinct images, repeated); every 100th truncated.
    Returns (readable, unreadable)."""
    rng = np.random.default_rng(seed)
    bases = []
    for i in range(100):
        buf = io.BytesIO()
        draw_shape(CLASSES[i % 4], rng, 48, 40).save(buf, format="JPEG", quality=85)
        bases.append(buf.getvalue())
    for c in CLASSES:
        os.makedirs(os.path.join(root, c), exist_ok=True)
    bad = 0
    for i in range(n):
        data = bases[i % 100]
        if i % 100 == 99:
            data, bad = data[: len(data) // 3], bad + 1
        with open(os.path.join(root, CLASSES[i % 4], f"{i:07d}.jpg"), "wb") as f:
            f.write(data)
    return n - bad, bad


def make_manifest(root: str, n: int, path: str) -> str:
    """A Parquet manifest of the images make_images wrote: path (relative to the manifest) and label."""
    rel = [f"{os.path.basename(root)}/{CLASSES[i % 4]}/{i:07d}.jpg" for i in range(n)]
    pq.write_table(pa.table({"path": rel, "label": [CLASSES[i % 4] for i in range(n)]}), path)
    return path


def run(model: str, images: str, out: str, workers: int, address: str | None = None, tta: int = 0) -> dict:
    """One `raycat predict` in a child process; the driver's peak RSS as the command reports it."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if address:
        env["RAY_ADDRESS"] = address
    cmd = [sys.executable, "-m", "raycat", "predict", model, images, "--out", out, "--tta", str(tta),
           "--workers", str(workers), "--batch-size", "128"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"predict failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    m = re.search(r"driver peak RSS (\d+) MB", proc.stdout)
    first = re.search(r"first shard after ([\d.]+)s", proc.stdout)
    paths = pads.dataset(os.path.join(out, "predictions"), format="parquet").to_table(columns=["path"]) \
        .column("path").to_pylist()
    skipped = []
    if os.path.exists(os.path.join(out, "skipped.csv")):
        with open(os.path.join(out, "skipped.csv")) as f:
            skipped = [r["path"] for r in csv.DictReader(f)]
    return {"seconds": seconds, "peak_mb": int(m.group(1)) if m else None,
            "first_shard_s": float(first.group(1)) if first else None, "predicted": len(paths),
            "unique": len(set(paths)), "skipped": len(skipped), "skipped_unique": len(set(skipped)),
            "overlap": len(set(paths) & set(skipped))}


def check(r: dict, n: int) -> None:
    assert r["predicted"] + r["skipped"] == n, r
    assert r["unique"] == r["predicted"] and r["skipped_unique"] == r["skipped"] and r["overlap"] == 0, r


# ---- the listing alone, before and after ------------------------------------------------------

BASELINE_REF = "deafce6"  # a commit whose listing stats every entry and makes one unit of a flat folder
HEAD_MODULES = ("listing", "storage")


def write_baseline(ref: str, into: str) -> str:
    """raycat/shell/listing.py and storage.py at `ref` as the modules baseline_listing and baseline_storage
    in `into` (the listing importing that storage, not this checkout's); returns the commit."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in HEAD_MODULES:
        src = subprocess.run(["git", "-C", repo, "show", f"{ref}:raycat/{name}.py"], capture_output=True, text=True,
                             check=True).stdout
        if name == "listing":
            assert "from raycat import storage\n" in src
            src = src.replace("from raycat import storage\n", "import baseline_storage as storage\n")
        with open(os.path.join(into, f"baseline_{name}.py"), "w") as f:
            f.write(src)
    return subprocess.run(["git", "-C", repo, "rev-parse", "--short", ref], capture_output=True, text=True,
                          check=True).stdout.strip()


def _listing_module(version: str):
    """This checkout's raycat.shell.listing ("after") or the baseline's, from the folder `version` names."""
    if version == "after":
        from raycat.shell import listing
    else:
        if version not in sys.path:
            sys.path.insert(0, version)
        import baseline_listing as listing
    return listing


def _warm(version: str) -> None:
    """A listing task's process, ready as Ray's are: its modules imported, no client made yet."""
    import boto3  # noqa: F401 - imported here, not on the clock

    _listing_module(version)


def _ready(_: int) -> int:
    time.sleep(0.2)
    return os.getpid()


def _list_one(args: tuple) -> tuple[float, list[tuple[str, int, int]]]:
    """One listing unit, as a Ray Data task would list it: (its CPU seconds, [(shard id, paths, sum of
    the paths' crc32) a shard])."""
    version, unit, source = args
    listing = _listing_module(version)
    cpu, rows = time.process_time(), list(listing.list_unit(unit, source))
    cpu = time.process_time() - cpu
    out = []
    for row in rows:
        shard, paths, _, _ = listing.shard_of(row)
        out.append((shard, len(paths), paths_crc(paths)))
    return cpu, out


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: of its own memory since exec; getrusage's ru_maxrss keeps the
    parent's peak across exec, and the bench holding 200,000 paths would hide the driver's)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def listing_child(version: str, images: str, procs: int) -> None:
    """One measured listing of IMAGES (a child process of its own: its peak RSS is the driver's)."""
    import multiprocessing

    listing = _listing_module(version)
    with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn"), initializer=_warm,
                             initargs=(version,)) as pool:
        pids: set[int] = set()
        while len(pids) < procs:  # every process of the pool started (spawned, imported) before the clock
            pids |= set(pool.map(_ready, range(procs)))
        rss_before = peak_rss_mb()
        t, cpu = time.perf_counter(), time.process_time()
        source, units = listing.plan_listing(images, CLASSES)
        plan_s, cpu = time.perf_counter() - t, time.process_time() - cpu
        done = list(pool.map(_list_one, [(version, u, source) for u in units]))
        seconds = time.perf_counter() - t
    shards = [s for _, unit in done for s in unit]
    cpu += sum(c for c, _ in done)
    peak = peak_rss_mb()
    ids = [s for s, _, _ in shards]
    print("LISTING " + json.dumps({
        "seconds": seconds, "plan_s": plan_s, "cpu_s": cpu, "units": len(units), "shards": len(shards),
        "ids_unique": len(set(ids)) == len(ids), "paths": sum(n for _, n, _ in shards),
        "crc": sum(c for _, _, c in shards),
        "digest": hashlib.sha256(json.dumps(sorted(shards)).encode()).hexdigest()[:16],
        "rss_before_mb": rss_before, "peak_mb": peak}), flush=True)


def measure_listing(version: str, images: str, procs: int) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--listing-child", version, images,
                           "--procs", str(procs)], capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("LISTING ")), None)
    if proc.returncode or line is None:
        raise SystemExit(f"listing {version} {images} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-3000:]}")
    return json.loads(line[len("LISTING "):])


def paths_crc(paths) -> int:
    return sum(zlib.crc32(p.encode()) for p in paths)


def make_flat(root: str, n: int) -> int:
    """n empty files NNNNNNN.jpg in one folder, and two that are no images; the images' paths_crc."""
    os.makedirs(root, exist_ok=True)
    for name in (*(f"{i:07d}.jpg" for i in range(n)), "README.txt", ".DS_Store"):
        open(os.path.join(root, name), "wb").close()
    return paths_crc(os.path.join(root, f"{i:07d}.jpg") for i in range(n))


def s3_server() -> subprocess.Popen:
    """moto's S3 server on a free loopback port, the AWS variables pointed at it (children inherit them)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except Exception:  # noqa: BLE001 - keep polling until the server answers
            time.sleep(0.2)
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"})
    return proc


def put_flat(bucket: str, prefix: str, n: int) -> int:
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    names = [*(f"{i:07d}.jpg" for i in range(n)), "README.txt"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=f"{prefix}/{k}", Body=b""), names))
    return paths_crc(f"s3://{bucket}/{prefix}/{i:07d}.jpg" for i in range(n))


def listing_bench(args) -> None:
    tmp = tempfile.mkdtemp(prefix="raycat-listing-")
    moto = None
    rows, loads = [], [os.getloadavg()[0]]
    try:
        commit = write_baseline(args.baseline_ref, tmp)
        cases = [("local", n, os.path.join(tmp, f"flat{n}")) for n in sorted({args.small_files, args.files})]
        if any(args.s3_files):
            moto = s3_server()
            # A bucket each: moto reads every key of a bucket for each page it lists.
            cases += [("S3 (moto)", n, f"s3://raycat-listing-bench-{n}/flat") for n in sorted(set(args.s3_files)) if n]
        for where, n, images in cases:
            crc = make_flat(images, n) if where == "local" else put_flat(f"raycat-listing-bench-{n}", "flat", n)
            runs = {v: [] for v in ("before", "after")}
            for _ in range(args.repeats):  # interleaved, so a busy minute on a shared machine hits both alike
                for version, code in (("before", tmp), ("after", "after")):
                    r = measure_listing(code, images, args.procs)
                    assert r["paths"] == n and r["crc"] == crc and r["ids_unique"], (version, r)  # each image once
                    runs[version].append(r)
                    print(where, n, version, {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()},
                          flush=True)
            for version, rs in runs.items():
                assert len({r["digest"] for r in rs}) == 1, f"{version}: shard ids or paths changed between runs"
            keys = ("seconds", "plan_s", "cpu_s", "peak_mb", "rss_before_mb")
            med = {v: {k: statistics.median(r[k] for r in rs) for k in keys} for v, rs in runs.items()}
            rows.append((where, n, runs["before"][0]["units"], runs["after"][0]["units"], med))
            loads.append(os.getloadavg()[0])
            if where == "local":
                shutil.rmtree(images, ignore_errors=True)
    finally:
        if moto:
            moto.terminate()
            moto.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    table = "\n".join(
        f"| {where} | {n:,} | {ub} → {ua} | {m['before']['plan_s']:.2f} s → {m['after']['plan_s']:.2f} s | "
        f"{m['before']['seconds']:.2f} s | {m['after']['seconds']:.2f} s | "
        f"**{m['before']['seconds'] / m['after']['seconds']:.1f}x** | "
        f"{m['before']['cpu_s']:.2f} s → {m['after']['cpu_s']:.2f} s | "
        f"{m['before']['peak_mb'] - m['before']['rss_before_mb']:.0f} MB → "
        f"{m['after']['peak_mb'] - m['after']['rss_before_mb']:.0f} MB |"
        for where, n, ub, ua, m in rows)
    body = f"""## Listing a flat folder for predict (`bench/predict_scale.py --listing`)

What `raycat predict IMAGES` does before scoring: `plan_listing` on the driver, then every unit's
`list_unit` (shards of 512 paths), the units run by a pool of {args.procs} processes started before the
clock, as predict's listing tasks (Ray's fixed cost left out). One flat folder of empty `NNNNNNN.jpg`
files (a local folder, and a prefix on moto's S3 server on loopback: smaller, as moto takes time linear
in the bucket for each page, stores some 250 objects a second, and the baseline makes two HEADs a
file). Ranges: 4,096 images on S3; 131,072 on a local folder (each of its ranges reads the whole
directory), so 20,000 local or 2,000 S3 images are one range still. Before: raycat/shell/listing.py and
storage.py at {commit} (one unit for a flat folder; a stat per entry on the driver and again per file
in the task; an S3 client made per call). After: this checkout (ranges of names: S3 lists each from
its bound with StartAfter; the types the listing gave, no stat; one client a process). Medians of
{args.repeats} runs each, before and after interleaved in the same bench run, each run a fresh process;
every image listed once (count and checksum of the paths), the same shard ids and paths in every run
of a version. Units, plan, CPU and RSS: before → after. CPU: the driver's plan and every unit's
listing, in process time (what a busy machine inflates least). The driver's RSS growth is that of
its peak while it listed; on S3, after, it is boto3's (imported, its client made, a page of up to
1,000 keys parsed at a time), which does not grow with the files.
Machine: {machine()}.
Shared with other work while it ran: 1-minute load average {min(loads):.1f} to {max(loads):.1f} on its 2 cores.

| source | files | units | driver's plan | listing before | listing after | speed-up | CPU | driver's RSS growth |
|---|---|---|---|---|---|---|---|---|
{table}
"""
    print(body)
    if not args.no_write:
        write_section("predict_listing", body)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, nargs="+", default=[20000, 200000])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--listing", action="store_true", help="measure the listing alone, before and after")
    ap.add_argument("--files", type=int, default=200000, help="--listing: files in the local flat folder")
    ap.add_argument("--small-files", type=int, default=20000, help="--listing: a smaller folder, for the memory")
    ap.add_argument("--s3-files", type=int, nargs="+", default=[500, 2000],
                    help="--listing: files in the S3 prefix, each size a bucket of its own (0: none)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--procs", type=int, default=2, help="--listing: processes listing the units")
    ap.add_argument("--baseline-ref", default=BASELINE_REF)
    ap.add_argument("--listing-child", nargs=2, metavar=("VERSION", "IMAGES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.listing_child:
        return listing_child(*args.listing_child, args.procs)
    if args.listing:
        return listing_bench(args)
    tmp = tempfile.mkdtemp(prefix="raycat-scale-")
    head = None
    try:
        model = write_random_model(os.path.join(tmp, "m"), CLASSES, 32)
        t = time.perf_counter()
        # `ray start` turns token auth on (Ray 2.60's default); the commands that join it need to know.
        os.environ["RAY_AUTH_MODE"] = "token"
        head = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head",
                               f"--num-cpus={os.cpu_count()}", "--include-dashboard=true", "--disable-usage-stats",
                               f"--temp-dir={tmp}/ray"], capture_output=True, text=True, check=True)
        ray_start = time.perf_counter() - t
        address = re.search(r"ray start --address='([^']+)'", head.stdout).group(1)
        rows = []
        for n in args.images:
            images = os.path.join(tmp, f"images{n}")
            good, bad = make_images(images, n)
            manifest = make_manifest(images, n, os.path.join(tmp, f"manifest{n}.parquet"))
            for source, where in (("folder", images), ("manifest", manifest)):
                r = run(model, where, os.path.join(tmp, f"out{n}{source}"), args.workers, address)
                check(r, n)
                rows.append((n, source, good, bad, r))
                print(n, source, r, flush=True)
            shutil.rmtree(images, ignore_errors=True)
    finally:
        subprocess.run(["pkill", "-9", "-f", f"{tmp}/ray"], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    table = "\n".join(
        f"| {n:,} | {source} | {r['predicted']:,} + {r['skipped']:,} = {r['predicted'] + r['skipped']:,} | "
        f"{r['peak_mb']} MB | {r['first_shard_s']:.1f} s | {r['seconds']:.0f} s | {n / r['seconds']:.0f} |"
        for n, source, good, bad, r in rows)
    peaks = [r["peak_mb"] for *_, r in rows]
    body = f"""## Predict at scale (`bench/predict_scale.py`)

`raycat predict` ({args.workers} scoring actor(s), --tta 0, batch 128) over small JPEGs (48x40 -> 32 px, resnet18
with random weights: the load, not the accuracy), every 100th file truncated, in 4 class folders or
listed in a Parquet manifest (`path`, `label`). Each run joins one Ray instance started before them
(Ray's start: {ray_start:.1f} s, not counted). Peak RSS is the driver's, as the command reports it
(getrusage). Every image accounted for: predicted + skipped = total, each path once, none both.
Machine: {machine()}.

| images | source | predicted + skipped | driver peak RSS | first shard done after | wall (whole command) | img/s |
|---|---|---|---|---|---|---|
{table}

Driver peak RSS, largest / smallest run: {max(peaks) / min(peaks):.2f}x (flat: the driver holds per-shard
summaries, never paths or rows).
"""
    print(body)
    if not args.no_write:
        write_section("predict_scale", body)


if __name__ == "__main__":
    main()
