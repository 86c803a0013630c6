"""fast.ai's augmentation presets as pure functions on batches of decoded images, on any device.

Input: uint8 images (N, 3, size, size), already resized on the short side and centre-cropped,
on the device that trains or scores. Output: float32 (N, 3, size, size), normalised with the
model's mean and std, on the same device.

Geometry is one affine map per image (rotation, zoom with a random crop position, flips, a
dihedral element, or a whole-pixel shift), applied in a single `grid_sample`, so a batch costs one
resampling however many transforms the preset has. Lighting, scaling to [0, 1] and normalisation
are one per-image, per-channel multiply-add and a clamp, done in place: one float temporary
besides the output. Randomness comes from a CPU `torch.Generator` the caller passes, so tests can
fix it and training draws fresh values every batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugmentSpec:
    """What the training augmentation may do to an image (the preset names are config.AUG_PRESETS)."""

    preset: str = "side_on"  # side_on | top_down | flip_shift | none
    max_zoom: float = 1.1  # zoom drawn uniformly in [1, max_zoom]; 1.1 = crop up to 10% away
    max_rotate: float = 10.0  # degrees, drawn uniformly in [-max_rotate, max_rotate]
    max_lighting: float = 0.05  # brightness and contrast change, each within +-5%
    max_shift: int = 2  # flip_shift: whole pixels, drawn uniformly in [-max_shift, max_shift] per axis
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


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


def shift_matrices(dx: torch.Tensor, dy: torch.Tensor, flip_x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 2, 3) maps that mirror (optionally) and move the image by whole pixels (dx, dy).

    One pixel is 2/size in normalised coordinates; with align_corners=False a whole-pixel move maps
    pixel centres onto pixel centres, so `grid_sample` copies pixels exactly (no blur)."""
    n = dx.shape[0]
    m = torch.zeros(n, 2, 3, dtype=torch.float64)
    m[:, 0, 0] = torch.where(flip_x, -1.0, 1.0)
    m[:, 1, 1] = 1.0
    m[:, 0, 2] = dx.double() * (2.0 / size)
    m[:, 1, 2] = dy.double() * (2.0 / size)
    return m


def random_matrices(n: int, spec: AugmentSpec, gen: torch.Generator, size: int = 0) -> torch.Tensor:
    """Draw one affine map per image according to the preset (float32, on the CPU)."""
    u = lambda *shape: torch.rand(*shape, generator=gen, dtype=torch.float64)
    if spec.preset == "flip_shift":
        d = torch.randint(-spec.max_shift, spec.max_shift + 1, (2, n), generator=gen)
        return shift_matrices(d[0], d[1], u(n) < 0.5, size).float()
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


def warp(x: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Resample float (N, C, H, W) through per-image affine maps; edges are reflected, as in fast.ai."""
    grid = F.affine_grid(matrices.to(device=x.device, dtype=x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _per_channel(values, x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)


def normalize(images: torch.Tensor, spec: AugmentSpec = AugmentSpec()) -> torch.Tensor:
    """The plain view: uint8 (N, 3, H, W) -> float32 normalised with the spec's mean and std."""
    x = images.float()
    std = _per_channel(spec.std, x)
    return x.mul_(1.0 / (255.0 * std)).sub_(_per_channel(spec.mean, x) / std)


def augment(images: torch.Tensor, spec: AugmentSpec, gen: torch.Generator) -> torch.Tensor:
    """A freshly augmented, normalised view of every image: uint8 (N, 3, H, W) -> float32."""
    if spec.preset == "none":
        return normalize(images, spec)
    n, size = images.shape[0], images.shape[-1]
    matrices = random_matrices(n, spec, gen, size)
    x = warp(images.float(), matrices)  # still 0..255: resampling is linear, so scaling can come after
    mean, std = _per_channel(spec.mean, x), _per_channel(spec.std, x)
    if spec.preset == "flip_shift":  # whole-pixel moves: values stay in range, no lighting
        return x.mul_(1.0 / (255.0 * std)).sub_(mean / std)
    # Lighting in [0, 1]: y = (v - 0.5)(1 + c) + 0.5 + b, clamped to [0, 1], then (y - mean) / std.
    # As one multiply-add per image and channel: v (1 + c) / (255 std) + (b - c/2 - mean) / std, and
    # the clamp moves to the normalised bounds [-mean/std, (1 - mean)/std] (std > 0).
    b = ((torch.rand(n, generator=gen) * 2 - 1) * spec.max_lighting).to(x).view(-1, 1, 1, 1)
    c = ((torch.rand(n, generator=gen) * 2 - 1) * spec.max_lighting).to(x).view(-1, 1, 1, 1)
    x.mul_((1.0 + c) / (255.0 * std)).add_((b - 0.5 * c - mean) / std)
    return torch.clamp(x, min=-mean / std, max=(1.0 - mean) / std, out=x)
