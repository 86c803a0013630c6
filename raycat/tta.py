"""Test-time augmentation: the plain view plus N augmented views, averaged as probabilities.

As in fast.ai v2, the result is `(1 - beta) * p_plain + beta * mean(p_augmented)`; beta = 0.25 by
default. With N = 0 it is plain inference.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from raycat.augment import AugmentSpec, augment_batch, eval_batch

DEFAULT_BETA = 0.25


def blend(plain: torch.Tensor, augmented: list[torch.Tensor], beta: float = DEFAULT_BETA) -> torch.Tensor:
    """Blend probability tensors: the plain view's with the mean of the augmented views'."""
    if not augmented:
        return plain
    return torch.lerp(plain, torch.stack(augmented).mean(0), beta)


def tta_probs(
    predict: Callable[[torch.Tensor], torch.Tensor],
    images: np.ndarray | torch.Tensor,
    spec: AugmentSpec,
    n_views: int,
    beta: float = DEFAULT_BETA,
    gen: torch.Generator | None = None,
) -> torch.Tensor:
    """Probabilities for a uint8 batch (N, H, W, 3): `predict` maps a normalised batch to logits.

    `predict` is called exactly n_views + 1 times.
    """
    gen = gen or torch.Generator().manual_seed(0)
    plain = torch.softmax(predict(eval_batch(images)).float(), dim=1)
    views = [torch.softmax(predict(augment_batch(images, spec, gen)).float(), dim=1) for _ in range(n_views)]
    return blend(plain, views, beta)
