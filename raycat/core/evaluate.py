"""Scoring a model on batches through one or more views: the valid pass, its TTA, and predict all
call `view_probs` / `evaluate`. Plain evaluation is the case of one view."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

from raycat.core.tta import DEFAULT_BETA, View, blend


@torch.no_grad()
def view_probs(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, views: Sequence[View],
               beta: float = DEFAULT_BETA) -> torch.Tensor:
    """Class probabilities (float32, on the CPU) of one batch: softmax of `forward` on every view,
    the first view blended with the mean of the others. `forward` is called once per view."""
    probs = [torch.softmax(forward(view(images)).float(), dim=1).cpu() for view in views]
    return blend(probs[0], probs[1:], beta)


@torch.no_grad()
def mean_probs(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
               views: Sequence[View]) -> torch.Tensor:
    """The mean of the views' class probabilities for one batch (float32, on the CPU): TTA's
    augmented part, for a caller that holds the plain probabilities already."""
    return torch.stack([torch.softmax(forward(view(images)).float(), dim=1).cpu() for view in views]).mean(0)


@torch.no_grad()
def evaluate(forward: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             views: Sequence[View], n_classes: int, beta: float = DEFAULT_BETA,
             blended: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities (N, n_classes), labels (N,)) over all batches, on the CPU: the first view
    blended with the others' mean, or (`blended=False`) every view's mean."""
    probs, labels = [], []
    for x, y in batches:
        probs.append(view_probs(forward, x, views, beta) if blended else mean_probs(forward, x, views))
        labels.append(torch.as_tensor(y).long().cpu())
    if not probs:
        return torch.zeros(0, n_classes), torch.zeros(0, dtype=torch.long)
    return torch.cat(probs), torch.cat(labels)
