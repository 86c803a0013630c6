import math

import numpy as np
import pytest
import torch

from raycat.core.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentSpec,
    affine_matrices,
    augment,
    normalize,
    random_matrices,
    warp,
)


def _images(n=2, size=16, seed=0):
    """uint8 (N, 3, H, W), as decode_batch gives them."""
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8))


def _reference(images, m, b, c):
    """The slow, obvious composition the fused `augment` must equal: warp in [0, 1], lighting,
    clamp, normalise."""
    x = warp(images.float() / 255, m)
    x = ((x - 0.5) * (1 + c.view(-1, 1, 1, 1)) + 0.5 + b.view(-1, 1, 1, 1)).clamp(0, 1)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _one(flip_x=False, flip_y=False, turns=0, angle=0.0, zoom=1.0, shift=(0.0, 0.0)):
    return affine_matrices(torch.tensor([angle], dtype=torch.float64), torch.tensor([zoom], dtype=torch.float64),
                           torch.tensor([shift], dtype=torch.float64), torch.tensor([flip_x]),
                           torch.tensor([flip_y]), torch.tensor([turns])).float()


def test_identity_map_changes_nothing():
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(warp(x, _one().repeat(2, 1, 1)), x, atol=1e-5)


def test_a_flip_really_flips():
    x = torch.rand(1, 3, 16, 16)
    assert torch.allclose(warp(x, _one(flip_x=True)), torch.flip(x, dims=[3]), atol=1e-5)


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_quarter_turns_are_exact_rotations(turns):
    x = torch.rand(1, 3, 16, 16)
    out = warp(x, _one(turns=turns))
    assert any(torch.allclose(out, torch.rot90(x, k, dims=[2, 3]), atol=1e-5) for k in (turns, -turns))


def test_top_down_draws_all_eight_dihedral_elements():
    spec = AugmentSpec("top_down", max_zoom=1.0, max_rotate=0.0)
    m = random_matrices(400, spec, torch.Generator().manual_seed(0))[:, :, :2]
    distinct = {tuple(np.round(a.flatten().numpy(), 3)) for a in m}
    assert len(distinct) == 8
    # includes a vertical flip (y -> -y with x unchanged) and a 90-degree turn (x, y swapped)
    assert (1.0, 0.0, 0.0, -1.0) in distinct
    assert any(abs(d[0]) < 1e-6 and abs(d[3]) < 1e-6 for d in distinct)


def test_side_on_never_turns_or_flips_vertically():
    spec = AugmentSpec("side_on", max_zoom=1.0, max_rotate=0.0)
    m = random_matrices(200, spec, torch.Generator().manual_seed(0))[:, :, :2]
    distinct = {tuple(np.round(a.flatten().numpy(), 3)) for a in m}
    assert distinct == {(1.0, 0.0, 0.0, 1.0), (-1.0, 0.0, 0.0, 1.0)}


def test_zoom_and_rotation_stay_in_range():
    spec = AugmentSpec("side_on", max_zoom=1.5, max_rotate=10.0)
    m = random_matrices(1000, spec, torch.Generator().manual_seed(1)).double()
    det = torch.linalg.det(m[:, :, :2]).abs()  # = 1 / zoom^2
    zoom = 1 / det.sqrt()
    assert zoom.min() >= 1.0 - 1e-5 and zoom.max() <= 1.5 + 1e-5 and zoom.max() > 1.4
    angle = torch.rad2deg(torch.atan2(m[:, 1, 0], m[:, 0, 0] * torch.sign(m[:, 0, 0]))).abs()
    assert angle.max() <= 10.0 + 1e-3 and angle.max() > 9.0
    # the zoomed window stays inside the image: |shift| <= 1 - 1/zoom
    assert (m[:, :, 2].abs() <= (1 - 1 / zoom).unsqueeze(1) + 1e-6).all()


def test_zoom_magnifies_the_centre():
    x = torch.zeros(1, 1, 32, 32)
    x[..., 12:20, 12:20] = 1.0  # an 8-pixel square in the middle
    out = warp(x, _one(zoom=2.0))
    assert abs(out.sum().item() - 4 * x.sum().item()) < 0.05 * 4 * x.sum().item()


def test_output_shape_dtype_and_normalisation():
    imgs = _images(3, 24)
    out = augment(imgs, AugmentSpec("side_on"), torch.Generator().manual_seed(0))
    assert out.shape == (3, 3, 24, 24) and out.dtype == torch.float32
    ref = (imgs.float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1)
    assert torch.allclose(normalize(imgs), ref, atol=1e-5)
    assert torch.allclose(augment(imgs, AugmentSpec("none"), torch.Generator()), ref, atol=1e-5)


def test_the_fused_augmentation_equals_warp_then_lighting_then_normalise():
    imgs = _images(6, 20, seed=3)
    spec = AugmentSpec("side_on", max_zoom=1.3, max_lighting=0.3)  # large lighting: the clamp bites
    gen = torch.Generator().manual_seed(11)
    out = augment(imgs, spec, gen)
    gen.manual_seed(11)  # the same draws, in the same order: matrices, then brightness, then contrast
    m = random_matrices(6, spec, gen, 20)
    b = (torch.rand(6, generator=gen) * 2 - 1) * spec.max_lighting
    c = (torch.rand(6, generator=gen) * 2 - 1) * spec.max_lighting
    assert torch.allclose(out, _reference(imgs, m, b, c), atol=1e-4)


def test_flip_shift_moves_whole_pixels_without_blur():
    imgs = _images(64, 16, seed=2)
    spec = AugmentSpec("flip_shift", max_shift=2)
    out = augment(imgs, spec, torch.Generator().manual_seed(0))
    plain = normalize(imgs)
    seen = set()
    for i in range(64):
        inner = out[i, :, 3:-3, 3:-3]  # away from the reflected border
        hits = [(f, dy, dx) for f in (False, True) for dy in range(-2, 3) for dx in range(-2, 3)
                if torch.allclose(inner, (plain[i].flip(-1) if f else plain[i])[:, 3 + dy:13 + dy, 3 + dx:13 + dx],
                                  atol=1e-4)]
        assert hits, "every view is the image, maybe mirrored, moved by whole pixels"
        seen.add(hits[0])
    assert len(seen) > 10 and any(f for f, _, _ in seen) and any(not f for f, _, _ in seen)


def test_fresh_draws_differ_and_fixed_seeds_repeat():
    imgs = _images(4, 16)
    spec = AugmentSpec("side_on", max_zoom=1.3)
    a = augment(imgs, spec, torch.Generator().manual_seed(5))
    b = augment(imgs, spec, torch.Generator().manual_seed(5))
    c = augment(imgs, spec, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_lighting_stays_within_five_percent():
    flat = torch.full((64, 3, 8, 8), 128, dtype=torch.uint8)
    spec = AugmentSpec("side_on", max_zoom=1.0, max_rotate=0.0)
    out = augment(flat, spec, torch.Generator().manual_seed(0))
    raw = out * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    dev = (raw - 128 / 255).abs().max().item()
    assert 0.005 < dev <= 0.05 * 1.05 + 0.5 * 0.05 + 1e-4


def test_the_spec_defaults_are_fastai_s():
    spec = AugmentSpec()
    assert spec.preset == "side_on" and math.isclose(spec.max_zoom, 1.1) and spec.max_rotate == 10.0
