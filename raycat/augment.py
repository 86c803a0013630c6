"""fast.ai's augmentation presets as pure functions on batches of cached images.

Input: uint8 images (N, size, size, 3), already resized on the short side and centre-cropped.
Output: float32 (N, 3, size, size), normalised with ImageNet mean and std.

Geometry is one affine map per image (rotation, zoom with a random crop position, flips or a
dihedral element), applied in a single `grid_sample`, so a batch costs one resampling however many
transforms the preset has. Randomness comes from a `torch.Generator` the caller passes, so tests
can fix it and the pipeline can draw fresh values every epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PRESETS = ("side_on", "top_down", "none")


@dataclass(frozen=True)
class AugmentSpec:
    """What the training augmentation may do to an image."""

    preset: str = "side_on"  # side_on | top_down | none
    max_zoom: float = 1.1  # zoom drawn uniformly in [1, max_zoom]; 1.1 = crop up to 10% away
    max_rotate: float = 10.0  # degrees, drawn uniformly in [-max_rotate, max_rotate]
    max_lighting: float = 0.05  # brightness and contrast change, each within +-5%

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"--aug: unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if not self.max_zoom >= 1.0:
            raise ValueError(f"--max-zoom: must be >= 1.0, got {self.max_zoom}")


def affine_matrices(
    angle_deg: torch.Tensor,
    zoom: torch.Tensor,
    shift: torch.Tensor,
    flip_x: torch.Tensor,
    flip_y: torch.Tensor,
    quarter_turns: torch.Tensor,
) -> torch.Tensor:
    """(N, 2, 3) matrices for `affine_grid`: output pixel coordinates -> input coordinates.

    Coordinates are normalised to [-1, 1]. A zoom z shows 1/z of the input; `shift` (N, 2) moves
    that window within the margin, in units of the margin (-1..1 keeps it inside the image).
    """
    n = angle_deg.shape[0]
    a = torch.deg2rad(angle_deg) + quarter_turns.to(angle_deg.dtype) * (math.pi / 2)
    cos, sin = torch.cos(a), torch.sin(a)
    # Snap exact quarter turns so that 90-degree rotations map pixel centres onto pixel centres.
    cos = torch.where(cos.abs() < 1e-6, torch.zeros_like(cos), cos)
    sin = torch.where(sin.abs() < 1e-6, torch.zeros_like(sin), sin)
    inv_z = 1.0 / zoom
    sx = torch.where(flip_x, -1.0, 1.0) * inv_z
    sy = torch.where(flip_y, -1.0, 1.0) * inv_z
    m = torch.zeros(n, 2, 3, dtype=angle_deg.dtype)
    m[:, 0, 0] = cos * sx
    m[:, 0, 1] = -sin * sy
    m[:, 1, 0] = sin * sx
    m[:, 1, 1] = cos * sy
    margin = 1.0 - inv_z
    m[:, 0, 2] = shift[:, 0] * margin
    m[:, 1, 2] = shift[:, 1] * margin
    return m


def random_matrices(n: int, spec: AugmentSpec, gen: torch.Generator) -> torch.Tensor:
    """Draw one affine map per image according to the preset."""
    u = lambda *shape: torch.rand(*shape, generator=gen, dtype=torch.float64)
    if spec.preset == "none":
        z = torch.zeros(n, dtype=torch.float64)
        f = torch.zeros(n, dtype=torch.bool)
        return affine_matrices(z, torch.ones(n, dtype=torch.float64), torch.zeros(n, 2, dtype=torch.float64), f, f,
                               torch.zeros(n, dtype=torch.long)).float()
    angle = (u(n) * 2 - 1) * spec.max_rotate
    zoom = 1.0 + u(n) * (spec.max_zoom - 1.0)
    shift = u(n, 2) * 2 - 1
    flip_x = u(n) < 0.5
    if spec.preset == "top_down":
        # The dihedral group: 4 quarter turns, each with or without a mirror.
        turns = torch.randint(0, 4, (n,), generator=gen)
    else:
        turns = torch.zeros(n, dtype=torch.long)
    flip_y = torch.zeros(n, dtype=torch.bool)
    return affine_matrices(angle, zoom, shift, flip_x, flip_y, turns).float()


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [0, 1]."""
    if isinstance(images, np.ndarray):
        # Ray hands out read-only views of its object store; torch wants writable memory.
        images = np.require(images, requirements=["C", "W"])
    t = torch.as_tensor(images) if isinstance(images, np.ndarray) else images
    return t.permute(0, 3, 1, 2).float().div_(255.0)


def warp(x: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Resample (N, C, H, W) through per-image affine maps; edges are reflected, as in fast.ai."""
    grid = F.affine_grid(matrices.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def lighting(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    """x in [0, 1]; brightness adds, contrast scales around mid-grey; both per image (N,)."""
    b = brightness.view(-1, 1, 1, 1).to(x.dtype)
    c = contrast.view(-1, 1, 1, 1).to(x.dtype)
    return ((x - 0.5) * (1.0 + c) + 0.5 + b).clamp_(0.0, 1.0)


def normalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def eval_batch(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The plain view: no augmentation, just scale and normalise."""
    return normalize(to_float(images))


def augment_unit(images: np.ndarray | torch.Tensor, spec: AugmentSpec, gen: torch.Generator) -> torch.Tensor:
    """A freshly augmented view of every image, float32 (N, 3, H, W) in [0, 1], not yet normalised."""
    x = to_float(images)
    if spec.preset == "none":
        return x
    n = x.shape[0]
    x = warp(x, random_matrices(n, spec, gen))
    b = (torch.rand(n, generator=gen) * 2 - 1) * spec.max_lighting
    c = (torch.rand(n, generator=gen) * 2 - 1) * spec.max_lighting
    return lighting(x, b, c)


def augment_batch(images: np.ndarray | torch.Tensor, spec: AugmentSpec, gen: torch.Generator) -> torch.Tensor:
    """A freshly augmented, normalised view of every image in the batch."""
    return normalize(augment_unit(images, spec, gen))


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats to uint8, for shipping between processes at a quarter of the bytes."""
    return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def normalize_uint8_chw(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> normalised float32: the consumer's half of the pipeline."""
    return normalize(x.float().div_(255.0))
