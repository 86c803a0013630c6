"""Test-time augmentation: a few small named views of a batch, whose predictions are averaged.

As in fast.ai v1, the result is `(1 - beta) * p_plain + beta * mean(p_augmented)`; beta = 0.25 by
default. With no augmented views it is plain inference. A view maps a uint8 batch (N, 3, H, W),
on the model's device, to the model's normalised input.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from raycat.core.augment import AugmentSpec, augment, normalize

DEFAULT_BETA = 0.25

View = Callable[[torch.Tensor], torch.Tensor]


def plain_view(spec: AugmentSpec) -> View:
    return lambda images: normalize(images, spec)


def augmented_view(spec: AugmentSpec, gen: torch.Generator) -> View:
    """A fresh random draw of the training augmentation every call."""
    return lambda images: augment(images, spec, gen)


def tta_views(spec: AugmentSpec, n_augmented: int, gen: torch.Generator) -> list[View]:
    """The plain view first, then `n_augmented` augmented ones (none: plain inference)."""
    return [plain_view(spec)] + augmented_views(spec, n_augmented, gen)


def augmented_views(spec: AugmentSpec, n: int, gen: torch.Generator) -> list[View]:
    """TTA's `n` augmented views alone (for a caller that has the plain view's probabilities)."""
    return [augmented_view(spec, gen) for _ in range(n)]


def blend(plain: torch.Tensor, augmented: Sequence[torch.Tensor], beta: float = DEFAULT_BETA) -> torch.Tensor:
    """Blend probability tensors: the plain view's with the mean of the augmented views'."""
    if not augmented:
        return plain
    return torch.lerp(plain, torch.stack(list(augmented)).mean(0), beta)
