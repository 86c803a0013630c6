"""`raycat predict MODEL IMAGES --out OUT [--tta N]`: batch scoring with TTA, resumable; and
`raycat predict MODEL FILE [FILE ...]` (no --out): a few images scored here, in seconds, no cluster.

The batch job is one streaming pass: the driver's listing threads cut IMAGES (a folder, a prefix
or a manifest) into numbered shards (listing.py) and hand each, as it is listed, to a pool of
scoring actors (scoring_pool.py), which read, decode and score it and write its Parquet part and
summary (scoring.py); the driver only merges the summaries
(counts, confusion, skipped files, the top-N images worth a look), so its memory stays flat however
many images there are.

Parts and summaries go to OUT/.raycat-predict/ first. A run that dies leaves them there: the same
command with the same OUT scores only the shards without a summary. A shard's summary is reused
only for the same model (a digest of weights.pt and the card, in the run's note) and the same
images (a digest of the shard's paths and labels, in the summary): a retrained model or an image
added under IMAGES is scored again, never mixed with an earlier run's rows. When every shard is
done the parts become OUT/predictions/ and the summary files are written, metrics.json last;
each step of that final write can be cut off and the same command finishes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import time
from dataclasses import dataclass, field

from raycat.config import PredictConfig
from raycat.edge import grids, model_card, outputs, storage
from raycat.edge.layout import IMAGE_EXTENSIONS
from raycat.errors import BadInput
from raycat.shell import listing
from raycat.shell.scoring import DONE, PARTS, ScoringSpec, actor_memory, part_name

RUN_DIR = ".raycat-predict"
RUN_NOTE = "run.json"
PUBLISHED = "published"  # in the run folder: OUT/predictions/ holds this run's parts, whole
PROGRESS_EVERY_S = 10.0  # seconds between progress lines
PER_RUN_FILES = ["confusion_matrix.csv", "confusion_matrix.png", "most_confused.csv", "skipped.csv", *grids.FILES,
                 "report.html"]


class PredictInputError(BadInput):
    pass


@dataclass
class Tally:
    """The run's summary, merged one shard summary at a time (memory bounded by --top)."""

    classes: list[str]
    top: int
    images: str = ""  # IMAGES, for messages
    n_images: int = 0
    shards: int = 0
    cm: list[list[int]] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    top_losses: list = field(default_factory=list)
    least_confident: list = field(default_factory=list)
    resumed_shards: int = 0  # scored by an earlier run that died, and not again
    resumed_images: int = 0
    scoring_dtypes: set[str] = field(default_factory=set)  # what the actors scored in (each resolves auto on its node)
    # {shard: digest of its images} for every shard this listing gave (a few thousand per million images)
    ids: dict[str, str] = field(default_factory=dict)

    def add(self, s: dict) -> None:
        from raycat.core.metrics import keep_top

        self.shards += 1
        self.ids[s["shard"]] = s["digest"]
        self.scoring_dtypes.add(s.get("scoring_dtype", "fp32"))  # summaries written before this key scored in fp32
        if s.get("resumed"):
            self.resumed_shards += 1
            self.resumed_images += s["n_scored"] + len(s["skipped"])
        self.n_images += s["n_scored"]
        self.skipped += [tuple(x) for x in s["skipped"]]
        if s["cm"] is not None:
            k = len(self.classes)
            self.cm = [[(self.cm[i][j] if self.cm else 0) + s["cm"][i][j] for j in range(k)] for i in range(k)]
        self.top_losses = keep_top(self.top_losses + s["top_losses"], self.top, key=lambda r: (r[0], r[1]))
        self.least_confident = keep_top(self.least_confident + s["least_confident"], self.top,
                                        key=lambda r: (r[0], r[1]), largest=False)


def run_settings(cfg: PredictConfig, model: str, card) -> dict:
    """What a resumed run must share with the run it goes on with: the model (its folder, and a
    digest of its weights and card, so a model retrained into the same folder is not mixed with
    the old one's scores) and the scoring settings. The images are checked shard by shard."""
    h = hashlib.sha256(storage.read_bytes(storage.join(model, model_card.WEIGHTS)))
    h.update(json.dumps({**card.to_json(), "exported": None}, sort_keys=True).encode())
    return {"model": model, "model_digest": h.hexdigest()[:16], "images": cfg.images[0], "tta": cfg.tta,
            "tta_beta": cfg.tta_beta, "top": cfg.top, "precision": cfg.precision}


def prepare_run(run: str, settings: dict) -> set[str]:
    """The shards an earlier, unfinished run with the same settings already scored (else none:
    its leftovers are cleared). Writes this run's note."""
    note = storage.join(run, RUN_NOTE)
    if storage.exists(note):
        before = json.loads(storage.read_text(note))
        if before == settings:
            done = {n[:-len(".json")] for n in storage.list_dir(storage.join(run, DONE)) if n.endswith(".json")}
            if done:
                print(f"raycat predict: resuming the unfinished run in {run}: {len(done)} shard(s) already scored")
            return done
        from raycat.shell.resume import differences

        # (a digest says only that the model changed)
        changed = "; ".join(d.split(":")[0] if d.startswith("model_digest") else d
                            for d in differences(before, settings))
        print(f"raycat predict: {run} holds an unfinished run with other settings ({changed}); starting over")
    storage.delete_tree(run)
    storage.write_text(note, json.dumps(settings, sort_keys=True))
    return set()


def run_predict(cfg: PredictConfig) -> int:
    if not cfg.out:
        return predict_files(cfg)
    t0 = time.time()
    folder, card = model_card.find(cfg.model)
    source, units = listing.plan_listing(cfg.images[0], card.classes)
    outputs.check_writable(cfg.out)
    outputs.check_space(cfg.out, 64 * outputs.MB, "the predictions' first parts and the plots")

    from raycat.shell import ray_session
    from raycat.shell.scoring_pool import ScorerPool

    ray_session.connect(cfg.resources.address, cfg.resources.verbose)
    res = cfg.resources
    cpus = ray_session.worker_cpus(res.cpus_per_worker, res.workers, res.gpu, ray_session.node_cpus())
    memory = actor_memory(cfg.batch_size, card.size, cfg.tta)
    check_room(res, cpus, memory)
    run = storage.join(cfg.out, RUN_DIR)
    storage.remove_stale_staging(cfg.out)
    done = prepare_run(run, run_settings(cfg, folder, card))
    # Shards an earlier run scored still go to an actor, which reuses the summary when the shard
    # holds the same images (it has the paths; the driver never does) and scores it otherwise.
    spec = ScoringSpec(model=folder, card=card.to_json(), tta=cfg.tta, tta_beta=cfg.tta_beta,
                       batch_size=cfg.batch_size, gpu=res.gpu, cpus=cpus, run=run, top=cfg.top, done=frozenset(done),
                       precision=cfg.precision)
    pool = ScorerPool(spec, res.workers, cpus, res.gpu, memory)
    tally = Tally(card.classes, cfg.top, images=cfg.images[0])
    first, ready, said = None, None, time.time()
    # Both generators closed on the way out, whatever ends the loop (an error, Ctrl-C): the listing
    # threads stop at once, and the command exits with its status.
    shards = listing.stream_shards(units, source, ahead=4 * res.workers + 4)
    summaries = pool.score(shards)
    try:
        for summary in summaries:
            if first is None:
                first = time.time() - t0
                ready = (pool.ready_at or time.time()) - t0
            tally.add(summary)
            if time.time() - said > PROGRESS_EVERY_S:
                said = time.time()
                print(f"raycat predict: {tally.shards} shards scored ({tally.n_images} images, "
                      f"{tally.n_images / (said - t0):.0f} images/s)", flush=True)
    finally:
        summaries.close()
        shards.close()
        pool.close()
    if tally.n_images == 0 and not tally.skipped:
        raise PredictInputError(f"IMAGES {cfg.images[0]}: no images found (extensions: "
                                f"{', '.join(sorted(e.lstrip('.') for e in IMAGE_EXTENSIONS))})")
    metrics = write_predict_outputs(cfg, folder, card, run, tally, t0, first, ready)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    acc = f", accuracy {metrics['accuracy']:.4f} on {metrics['n_labelled']} labelled" if metrics["n_labelled"] else ""
    print(f"raycat predict: {tally.n_images} images scored ({cfg.tta} TTA views), {len(tally.skipped)} skipped{acc}; "
          f"{metrics['seconds']:.0f}s (first shard after {metrics['first_shard_seconds']:.1f}s, actors ready after "
          f"{metrics['actors_ready_seconds'] or 0:.1f}s); driver peak RSS "
          f"{peak_mb:.0f} MB; outputs in {cfg.out}")
    return 0



def check_room(res, cpus: int, memory: int) -> None:
    """On a local Ray instance, which nothing joins, more scoring actors than it can place would
    never start: refused before any work (exit 2). A joined cluster may grow; there the pool
    scores with the actors that are up and says what it waits for while none is."""
    if res.address is not None or os.environ.get("RAY_ADDRESS"):
        return
    from raycat.shell import group_watch, ray_session

    per_actor = {"CPU": cpus, **({"GPU": 1} if res.gpu else {}), "memory": memory}
    room = group_watch.workers_that_fit(ray_session.node_totals(), per_actor)
    if room < res.workers:
        raise PredictInputError(
            f"--workers {res.workers}: this machine's Ray instance holds {room} scoring actor(s) of {cpus} CPU"
            f"{' + 1 GPU' if res.gpu else ''} + {memory / 2**30:.1f} GiB memory; lower --workers or --cpus-per-worker")


def write_predict_outputs(cfg: PredictConfig, folder: str, card, run: str, tally: Tally, t0: float,
                          first: float | None, ready: float | None = None) -> dict:
    from raycat.core import metrics as core_metrics

    out, classes = cfg.out, card.classes
    cm = tally.cm
    n_labelled = sum(map(sum, cm)) if cm else 0
    m = {"n_images": tally.n_images, "n_skipped": len(tally.skipped), "n_labelled": n_labelled,
         "n_shards": tally.shards, "resumed_shards": tally.resumed_shards, "resumed_images": tally.resumed_images,
         "tta_views": cfg.tta, "tta_beta": cfg.tta_beta, "scoring_dtype": "+".join(sorted(tally.scoring_dtypes)),
         "classes": classes,
         "model": folder, "raycat_version": card.raycat_version}

    import torch

    def write_files() -> None:
        from raycat.edge import report

        publish_predictions(run, out, tally)
        images, confused = {}, []
        if n_labelled:
            t = torch.tensor(cm)
            images["confusion_matrix"] = outputs.write_confusion(out, t, classes,
                                                                 f"confusion matrix ({n_labelled} labelled images)")
            confused = core_metrics.most_confused(t, classes)
            outputs.write_csv(storage.join(out, "most_confused.csv"), ["actual", "predicted", "count"], confused)
            images["top_losses"] = grids.write(out, "top_losses", card, tally.top_losses)
            images["most_uncertain"] = grids.write(out, "most_uncertain", card, tally.least_confident)
        else:
            images["least_confident"] = grids.write(out, "least_confident", card, tally.least_confident)
        outputs.write_skipped(out, tally.skipped)
        report.write(out, report.predict_page(m, card.to_json(), tally.skipped, {k: v for k, v in images.items() if v},
                                              cm if n_labelled else None, confused, out=out))

    if n_labelled:
        prec, rec = core_metrics.precision_recall(torch.tensor(cm))
        m.update({"accuracy": sum(cm[i][i] for i in range(len(classes))) / n_labelled,
                  "precision": dict(zip(classes, prec, strict=True)), "recall": dict(zip(classes, rec, strict=True))})
    m["seconds"] = round(time.time() - t0, 2)
    m["first_shard_seconds"] = round(first if first is not None else m["seconds"], 2)
    # (from the command's start to the first scoring actor's model loaded: the first shard came
    # first_shard_seconds - actors_ready_seconds after it)
    m["actors_ready_seconds"] = round(ready, 2) if ready is not None else None
    outputs.write_run(out, write_files, m, stale=PER_RUN_FILES)
    storage.delete_tree(run)
    return m


def publish_predictions(run: str, out: str, tally: Tally) -> None:
    """The run's Parquet parts become OUT/predictions/, restartably: a run cut off anywhere in here
    (or later in the final write) is finished by the same command, which finds either the parts
    still whole or the PUBLISHED note saying they were moved.

    Local: one rename (replace_tree), after which the parts folder is gone and predictions/ whole,
    so a missing parts folder without the note means the rename happened. A rerun may have scored
    some shards again since (an image added under IMAGES): their new parts recreate the parts
    folder, and the parts of the shards it reused are still in predictions/ from the rename; those
    are moved back beside the new ones first, so the rename publishes every shard. S3 has no
    rename: the parts are copied and stay until the note is written."""
    note, parts, dest = storage.join(run, PUBLISHED), storage.join(run, PARTS), storage.join(out, "predictions")
    which = hashlib.sha256(json.dumps(sorted(tally.ids.items())).encode()).hexdigest()
    if storage.exists(note):
        if storage.read_text(note) == which:
            return
        # IMAGES changed after an earlier run published its parts and before it finished: those
        # parts are gone, so this run can't be finished from them. Start afresh next time.
        storage.delete_tree(run)
        raise PredictInputError(f"IMAGES {tally.images}: changed while an earlier run into this OUT was writing its "
                                "outputs; run the same command again to score them afresh")
    if not tally.n_images:
        storage.delete_tree(dest)  # an earlier run's predictions are not this run's
    elif storage.exists(parts):
        # A part whose shard this listing did not give (an image removed since a run that died).
        wanted = {part_name(s) for s in tally.ids}
        for name in storage.list_dir(parts):
            if name not in wanted:
                storage.delete_tree(storage.join(parts, name))
        if storage.is_s3(out):
            storage.delete_tree(dest)
            storage.copy_tree(parts, dest)
        else:
            have = set(storage.list_dir(parts))
            for name in sorted(wanted - have):
                if storage.exists(storage.join(dest, name)):
                    storage.replace_tree(storage.join(dest, name), storage.join(parts, name))
            storage.replace_tree(parts, dest)
    storage.write_text(note, which)


def predict_files(cfg: PredictConfig) -> int:
    """A few image files scored in this process: no cluster, no outputs, one line per file."""
    import torch

    from raycat.core.decode import DecodeError, decode_one
    from raycat.core.device import autocast, pick_device, resolve_precision
    from raycat.core.evaluate import view_probs
    from raycat.core.tta import tta_views

    folder, card = model_card.find(cfg.model)
    not_files = [p for p in cfg.images if storage.is_dir(p) or listing.is_manifest(p)]
    if not_files:
        raise PredictInputError(f"IMAGES {not_files[0]}: a folder or manifest needs --out (a batch job); without "
                                "--out, name image files")
    device = pick_device(cfg.resources.gpu)
    precision = resolve_precision(cfg.precision, device)
    model = model_card.load(folder, card).to(device)
    views = tta_views(card.augment_spec(), cfg.tta, torch.Generator().manual_seed(0))

    def forward(x):
        with autocast(device, precision):
            return model(x).float()

    status = 0
    for path in cfg.images:
        try:
            x = decode_one(storage.read_bytes(path), card.size).unsqueeze(0).to(device)
        except (DecodeError, OSError, storage.StorageError) as e:
            print(f"{path}: skipped ({e})")
            status = 1
            continue
        p = view_probs(forward, x, views, cfg.tta_beta)[0]
        best = int(p.argmax())
        print(f"{path}: {card.classes[best]} ({float(p[best]):.4f})")
    return status
