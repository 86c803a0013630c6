"""Plots as PNG bytes (matplotlib, no display): lr_find curve, training curves, confusion matrix."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Above this many classes the confusion plot drops per-cell counts; they would overlap.
MAX_CLASSES_WITH_COUNTS = 30


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def lr_find_png(lrs: list[float], losses: list[float], smoothed: list[float], suggestion: float, title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses, color="0.75", lw=1, label="loss")
    ax.plot(lrs, smoothed, color="C0", lw=2, label="smoothed loss")
    ax.axvline(suggestion, color="C3", ls="--", label=f"suggested lr {suggestion:.1e}")
    ax.set_xscale("log")
    finite = [v for v in smoothed if v == v]
    if finite:
        lo, hi = min(finite), max(finite[: max(1, len(finite) * 3 // 4)])
        ax.set_ylim(lo - 0.1 * abs(lo), hi + 0.25 * (hi - lo) + 1e-6)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend()
    return _png(fig)


def note_png(title: str, text: str) -> bytes:
    """A plot-sized card saying why there is no plot (lr_find.png of a run that did not sweep)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=11)
    ax.set_title(title)
    return _png(fig)


def history_png(history: list[dict]) -> bytes:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    x = list(range(1, len(history) + 1))
    ax1.plot(x, [r["train_loss"] for r in history], "o-", label="train loss")
    ax1.plot(x, [r["valid_loss"] for r in history], "o-", label="valid loss")
    ax2.plot(x, [r["accuracy"] for r in history], "o-", color="C2", label="valid accuracy")
    # Shade and label each stage so the recipe's steps are visible.
    start = 0
    for i in range(1, len(history) + 1):
        if i == len(history) or history[i]["stage"] != history[start]["stage"]:
            for ax in (ax1, ax2):
                ax.axvspan(start + 0.5, i + 0.5, alpha=0.08 if (start % 2 == 0) else 0.16, color="0.3")
            ax1.text((start + i + 1) / 2, 1.01, history[start]["stage"], transform=ax1.get_xaxis_transform(),
                     ha="left", va="bottom", fontsize=7, rotation=30)
            start = i
    ax1.set_xlabel("epoch (all stages)")
    ax1.set_ylabel("cross-entropy")
    ax1.legend()
    ax2.set_xlabel("epoch (all stages)")
    ax2.set_ylabel("accuracy")
    ax2.set_ylim(0, 1)
    ax2.legend()
    return _png(fig)


def confusion_png(cm, classes: list[str], title: str = "confusion matrix") -> bytes:
    import numpy as np

    cm = np.asarray(cm)
    n = len(classes)
    side = min(16, max(4, 0.45 * n + 2))
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="images")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    fs = 9 if n <= 15 else max(4, 9 - n // 10)
    ax.set_xticklabels(classes, rotation=90 if n > 6 else 45, ha="right" if n <= 6 else "center", fontsize=fs)
    ax.set_yticklabels(classes, fontsize=fs)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    if n < MAX_CLASSES_WITH_COUNTS:
        thresh = cm.max() / 2 if cm.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=fs,
                        color="white" if cm[i, j] > thresh else "black")
    return _png(fig)


def trials_png(rows: list[dict]) -> bytes:
    """Accuracy against lr, coloured by lr_mult; early-stopped trials hollow."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    done = [r for r in rows if r.get("accuracy") is not None and r.get("lr")]
    if done:
        mults = [float(r.get("lr_mult") or 0) for r in done]
        sc = ax.scatter([r["lr"] for r in done], [r["accuracy"] for r in done], c=mults, cmap="viridis", s=60,
                        edgecolors="k")
        for r in done:
            if r["status"] != "completed":
                ax.scatter([r["lr"]], [r["accuracy"]], s=140, facecolors="none", edgecolors="C3")
        fig.colorbar(sc, ax=ax, label="lr_mult")
    ax.set_xscale("log")
    ax.set_xlabel("base learning rate (log scale)")
    ax.set_ylabel("valid accuracy (last report)")
    ax.set_title("tune trials (red ring: stopped early)")
    return _png(fig)


def image_grid_png(images: list, titles: list[str], title: str, columns: int = 4) -> bytes:
    """Images (uint8 HWC arrays) in a grid, each under its own caption: fast.ai's plot_top_losses."""
    n = max(1, len(images))
    cols = min(columns, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, caption in zip(axes.flat, images, titles, strict=False):
        ax.imshow(img)
        ax.set_title(caption, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _png(fig)
