"""Metrics as pure functions of (logits or probabilities, labels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(F.cross_entropy(logits.float(), labels.long()))


def nll_of_probs(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float(F.nll_loss(torch.log(probs.float().clamp_min(1e-12)), labels.long()))


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of argmax(scores) == labels; scores may be logits or probabilities."""
    if len(labels) == 0:
        return float("nan")
    return float((scores.argmax(dim=1) == labels).float().mean())


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(n, n) counts: row = true class, column = predicted class."""
    idx = labels.long() * n_classes + predicted.long()
    return torch.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def precision_recall(cm: torch.Tensor) -> tuple[list[float | None], list[float | None]]:
    """Per-class precision (by predicted column) and recall (by true row); None where undefined."""
    tp = cm.diag().double()
    col, row = cm.sum(0).double(), cm.sum(1).double()
    prec = [float(t / c) if c > 0 else None for t, c in zip(tp, col, strict=True)]
    rec = [float(t / r) if r > 0 else None for t, r in zip(tp, row, strict=True)]
    return prec, rec


def most_confused(cm: torch.Tensor, classes: list[str], min_count: int = 1) -> list[tuple[str, str, int]]:
    """Off-diagonal (actual, predicted, count), largest first, as fast.ai's most_confused."""
    out = [(classes[i], classes[j], int(cm[i, j])) for i in range(len(classes)) for j in range(len(classes))
           if i != j and int(cm[i, j]) >= min_count]
    return sorted(out, key=lambda t: (-t[2], t[0], t[1]))


# ---- the images worth a look (fast.ai's plot_top_losses) -------------------------------------

def top_losses(probs: torch.Tensor, labels: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """(index, loss) of the k labelled rows with the highest loss, -log p(true class): the most
    confidently wrong first. Rows labelled -1 (unknown) are left out."""
    known = (labels >= 0).nonzero().flatten()
    if len(known) == 0 or k <= 0:
        return []
    p_true = probs[known, labels[known]].float().clamp_min(1e-12)
    loss = -torch.log(p_true)
    top = torch.topk(loss, min(k, len(known)))
    return [(int(known[i]), float(v)) for v, i in zip(top.values, top.indices, strict=True)]


def least_confident(probs: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """(index, confidence) of the k rows whose top class has the lowest probability."""
    if len(probs) == 0 or k <= 0:
        return []
    conf = probs.float().max(dim=1).values
    low = torch.topk(conf, min(k, len(conf)), largest=False)
    return [(int(i), float(v)) for v, i in zip(low.values, low.indices, strict=True)]


def worth_a_look(probs: torch.Tensor, labels: torch.Tensor, k: int) -> dict[str, list[list]]:
    """The rows behind the two grids, by row index and class index:
    `top_losses` [loss, index, actual, predicted, probability of the prediction] and
    `least_confident` [confidence, index, actual (-1: unknown), predicted]. `name_rows` turns the
    indices into paths and class names."""
    pred = probs.argmax(1) if len(probs) else torch.zeros(0, dtype=torch.long)
    return {
        "top_losses": [[loss, i, int(labels[i]), int(pred[i]), float(probs[i, pred[i]])]
                       for i, loss in top_losses(probs, labels, k)],
        "least_confident": [[conf, i, int(labels[i]), int(pred[i])] for i, conf in least_confident(probs, k)],
    }


def name_rows(rows: list[list], names, classes) -> list[list]:
    """`worth_a_look`'s rows with the row index replaced by names[index] and class indices by
    classes[...] (None for an unknown label)."""
    return [[r[0], names[r[1]], classes[r[2]] if r[2] >= 0 else None, classes[r[3]], *r[4:]] for r in rows]


def keep_top(rows: list, k: int, key, largest: bool = True) -> list:
    """The k best of `rows` by `key`: merges per-shard candidates into the run's, in bounded memory."""
    import heapq

    return (heapq.nlargest if largest else heapq.nsmallest)(k, rows, key=key)
