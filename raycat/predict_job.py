"""`raycat predict MODEL IMAGES --out OUT [--tta N]`: batch inference with TTA on Ray Data.

Images stream from storage through decode tasks to a pool of actors that each hold the model, and
the rows are written as Parquet as they come: the driver never holds the images, so memory stays
bounded however many there are. Outputs are staged beside OUT's final names and moved into place
only when complete.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass

import numpy as np
import torch

from raycat import metrics, outputs, storage
from raycat.augment import AugmentSpec
from raycat.config import PredictConfig
from raycat.errors import BadInput
from raycat.layout import is_image_name, unsafe_class_names
from raycat.pipeline import decode_batch

PREDICT_OUTPUTS = ["confusion_matrix.csv", "confusion_matrix.png", "most_confused.csv", "metrics.json",
                   "skipped.csv"]


class PredictInputError(BadInput):
    pass


@dataclass
class ModelCard:
    uri: str  # the model/ folder
    arch: str
    classes: list[str]
    size: int
    aug: str
    max_zoom: float


def read_model_card(model: str) -> ModelCard:
    """MODEL may be a raycat model/ folder or the OUT of `raycat train` that holds one."""
    for folder in (model, storage.join(model, "model")):
        card_uri = storage.join(folder, "model.json")
        if storage.exists(card_uri) and storage.exists(storage.join(folder, "weights.pt")):
            try:
                card = json.loads(storage.read_text(card_uri))
                bad = unsafe_class_names(card["classes"])
                if bad:
                    raise ValueError(f"classes must be distinct folder names, not {', '.join(bad)}")
                if not 8 <= int(card["size"]) <= 4096:
                    raise ValueError(f"size {card['size']} is not an image side in pixels (8-4096)")
                return ModelCard(uri=folder, arch=card["arch"], classes=list(card["classes"]), size=int(card["size"]),
                                 aug=card.get("aug", "side_on"), max_zoom=float(card.get("max_zoom", 1.1)))
            except (ValueError, KeyError, TypeError) as e:
                raise PredictInputError(f"MODEL {card_uri}: not a raycat model card ({type(e).__name__}: {e})") \
                    from None
    raise PredictInputError(f"MODEL {model}: not a raycat model (no model.json and weights.pt in it or in "
                            f"{storage.join(model, 'model')})")


def label_images(images: str, classes: list[str]) -> tuple[list[str], list[int]]:
    """Image URIs under IMAGES and their labels (class index, or -1 when unknown).

    A folder tree IMAGES/<name>/<image> with no loose images is a labelled set: every <name> must
    be one of the model's classes. Otherwise an image is labelled when its folder is named after
    a class.
    """
    paths = [p for p in storage.list_files(images) if is_image_name(p)]
    if not paths:
        raise PredictInputError(f"IMAGES {images}: no images found (extensions: jpg, jpeg, png, bmp, gif, webp, "
                                "tif, tiff)")
    root = storage.absolute(images)
    rel = [p[len(root) + 1:].replace("\\", "/").split("/") for p in paths]
    index = {c: i for i, c in enumerate(classes)}
    if all(len(r) == 2 for r in rel):
        unknown = sorted({r[0] for r in rel} - set(classes))
        if unknown:
            raise PredictInputError(
                f"IMAGES {images}: labelled folders {', '.join(unknown)} are not among the model's classes "
                f"({', '.join(classes)})")
    labels = [index.get(r[-2], -1) if len(r) >= 2 else -1 for r in rel]
    return paths, labels


class Predictor:
    """Ray Data actor holding the model: decoded batches in, one row of scores per readable image out."""

    def __init__(self, card: dict, n_views: int, beta: float, use_gpu: bool, actors: int = 1):
        import os

        from raycat.model import create_model, load_weights

        # Ray starts actors with OMP_NUM_THREADS=1; on CPU the actors should share the node's cores.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, actors)))

        self.classes = card["classes"]
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = create_model(card["arch"], len(self.classes), "none")
        load_weights(self.model, card["uri"])
        self.model.to(self.device).eval()
        self.spec = AugmentSpec(card["aug"], card["max_zoom"])
        self.n_views, self.beta = n_views, beta
        self.gen = torch.Generator().manual_seed(0)

    @torch.no_grad()
    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        from raycat.recipe import autocast

        with autocast(self.device):
            return self.model(x.to(self.device)).float().cpu()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from raycat.tta import tta_probs

        ok = np.asarray([e == "" for e in batch["error"]], dtype=bool)
        n, k = len(ok), len(self.classes)
        probs = np.full((n, k), np.nan, dtype=np.float32)
        if ok.any():
            probs[ok] = tta_probs(self._logits, batch["image"][ok], self.spec, self.n_views, self.beta,
                                  self.gen).numpy()
        best = np.nan_to_num(probs, nan=-1.0).argmax(axis=1)
        labels = batch["label"]
        out = {
            "path": batch["path"],
            "label": np.asarray([self.classes[y] if y >= 0 else None for y in labels], dtype=object),
            "prediction": np.asarray([self.classes[b] if o else None for b, o in zip(best, ok, strict=True)],
                                     dtype=object),
            "confidence": np.where(ok, probs.max(axis=1, initial=0.0), np.nan).astype(np.float32),
            "error": batch["error"],
        }
        for j, c in enumerate(self.classes):
            out[f"p_{c}"] = probs[:, j]
        return out


def summarize(table_batches, classes: list[str]) -> dict:
    """Confusion matrix, counts and skipped files from the scored rows, one Arrow batch at a time."""
    k = len(classes)
    index = {c: i for i, c in enumerate(classes)}
    cm = torch.zeros(k, k, dtype=torch.long)
    n_images, skipped = 0, []
    for b in table_batches:
        d = b.to_pydict()
        for path, err in zip(d["path"], d["error"], strict=True):
            if err:
                skipped.append((path, err))
        good = [i for i, e in enumerate(d["error"]) if not e]
        n_images += len(good)
        lab = [(index[d["label"][i]], index[d["prediction"][i]]) for i in good if d["label"][i] is not None]
        if lab:
            y, p = torch.tensor(lab).T
            cm += metrics.confusion_matrix(p, y, k)  # confusion counts add up across batches
    return {"cm": cm, "n_images": n_images, "skipped": skipped}


def run_predict(cfg: PredictConfig) -> int:
    t0 = time.time()
    card = read_model_card(cfg.model)
    paths, labels = label_images(cfg.images, card.classes)
    outputs.check_writable(cfg.out)
    # The scored rows are written twice (all rows, then the readable ones); Parquet compresses them.
    row_bytes = sum(len(p) for p in paths) + len(paths) * (32 + 4 * len(card.classes))
    outputs.check_space(cfg.out, 2 * row_bytes + 16 * outputs.MB, "the predictions and the plots")

    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    import ray.data

    from raycat import ray_session

    ray_session.connect(cfg.address)
    storage.remove_stale_staging(cfg.out)
    final = storage.join(cfg.out, "predictions")
    scored_uri = storage.staging_uri(storage.join(cfg.out, "scored"))
    staged = storage.staging_uri(final)
    n_blocks = max(1, min(len(paths) // 64 + 1, 2000))
    items = [{"path": p, "label": y} for p, y in zip(paths, labels, strict=True)]
    ds = ray.data.from_items(items, override_num_blocks=n_blocks)
    ds = ds.map_batches(decode_batch, fn_kwargs={"size": card.size}, batch_size=cfg.batch_size)
    card_dict = {"uri": card.uri, "arch": card.arch, "classes": card.classes, "aug": card.aug,
                 "max_zoom": card.max_zoom}
    ds = ds.map_batches(Predictor, fn_constructor_kwargs={"card": card_dict, "n_views": cfg.tta, "beta": cfg.tta_beta,
                                                          "use_gpu": cfg.gpu, "actors": cfg.workers},
                        batch_size=cfg.batch_size, compute=ray.data.ActorPoolStrategy(size=cfg.workers),
                        num_gpus=1 if cfg.gpu else None)
    fs, scored_path = storage.filesystem(scored_uri)
    # Ray Data retries each Parquet write on the store's transient errors (AWS NETWORK_CONNECTION...).
    ds.write_parquet(scored_path, filesystem=fs)

    # Second, driver-side streaming pass: summarise, and keep only the readable rows as predictions.
    # Each step reads or rewrites whole staging folders, so a failed try is simply run again.
    def summarise() -> dict:
        scored = pads.dataset(scored_path, filesystem=fs, format="parquet")
        return summarize(scored.to_batches(columns=["path", "label", "prediction", "error"]), card.classes)

    summary = storage.retrying(f"read {scored_uri}", summarise, storage.is_s3(scored_uri))
    _, staged_path = storage.filesystem(staged)

    def stage_predictions() -> None:
        storage.delete_tree(staged)
        scored = pads.dataset(scored_path, filesystem=fs, format="parquet")
        columns = [c for c in scored.schema.names if c != "error"]
        pads.write_dataset(scored.scanner(columns=columns, filter=pc.field("error") == ""), staged_path,
                           filesystem=fs, format="parquet", basename_template="part-{i}.parquet")

    storage.retrying(f"write {staged}", stage_predictions, storage.is_s3(staged))

    # metrics.json goes first and comes back last: an OUT that has it holds one whole run's outputs,
    # whatever point a failure (a store that stays down) stopped this one at.
    for name in sorted(PREDICT_OUTPUTS, key=lambda n: n != "metrics.json"):  # per-run files an earlier run left
        storage.delete_tree(storage.join(cfg.out, name))  # (nothing there: nothing to do)
    storage.replace_tree(staged, final)
    storage.delete_tree(scored_uri)
    cm = summary["cm"]
    n_labelled = int(cm.sum())
    m = {"n_images": summary["n_images"], "n_skipped": len(summary["skipped"]), "n_labelled": n_labelled,
         "tta_views": cfg.tta, "tta_beta": cfg.tta_beta, "classes": card.classes, "model": card.uri,
         "seconds": round(time.time() - t0, 2)}
    if n_labelled:
        prec, rec = metrics.precision_recall(cm)
        m.update({"accuracy": float(cm.diag().sum()) / n_labelled,
                  "precision": dict(zip(card.classes, prec, strict=True)),
                  "recall": dict(zip(card.classes, rec, strict=True))})
        outputs.write_confusion(cfg.out, cm, card.classes, f"confusion matrix ({n_labelled} labelled images)")
        outputs.write_csv(storage.join(cfg.out, "most_confused.csv"), ["actual", "predicted", "count"],
                          metrics.most_confused(cm, card.classes))
    outputs.write_skipped(cfg.out, summary["skipped"])
    outputs.write_json(storage.join(cfg.out, "metrics.json"), m)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    acc = f", accuracy {m['accuracy']:.4f} on {n_labelled} labelled" if n_labelled else ""
    print(f"raycat predict: {summary['n_images']} images scored ({cfg.tta} TTA views), "
          f"{len(summary['skipped'])} skipped{acc}; driver peak RSS {peak_mb:.0f} MB; outputs in {cfg.out}")
    return 0

