import numpy as np
import pytest
import torch
from images import awkward_good_files, bad_files, encode, exif_rotated_jpeg, gradient_rgb
from PIL import Image

from raycat.core.decode import DecodeError, decode_rgb, load_image


@pytest.mark.parametrize("name", sorted(awkward_good_files()))
def test_every_mode_decodes_to_rgb_at_the_requested_size(name):
    out = load_image(awkward_good_files()[name], 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_sixteen_bit_is_rescaled_not_clipped():
    a = np.full((10, 10), 32768, np.uint16)  # half of the 16-bit range
    img = decode_rgb(encode(Image.fromarray(a), "PNG"))
    assert img.mode == "RGB"
    assert abs(int(np.asarray(img)[0, 0, 0]) - 128) <= 1  # PIL's own convert would give 255


def test_alpha_is_composited_over_white():
    transparent = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert np.asarray(decode_rgb(encode(transparent, "PNG")))[0, 0].tolist() == [255, 255, 255]


def test_grayscale_becomes_three_equal_channels():
    a = np.asarray(decode_rgb(encode(gradient_rgb().convert("L"), "PNG")))
    assert a.shape[-1] == 3 and (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()


def test_cmyk_colours_survive():
    red = Image.new("RGB", (16, 16), (220, 20, 20))
    a = np.asarray(decode_rgb(encode(red.convert("CMYK"), "JPEG", quality=100))).astype(int)
    assert a[8, 8, 0] > 180 and a[8, 8, 1] < 60 and a[8, 8, 2] < 60


def test_exif_orientation_is_applied():
    img = decode_rgb(exif_rotated_jpeg())
    # Stored 40 wide x 20 high, left black/right white; rotated 90 CW it is 20x40, top black.
    assert img.size == (20, 40)
    a = np.asarray(img).mean(axis=(1, 2))
    assert a[:15].mean() < 40 and a[-15:].mean() > 215


@pytest.mark.parametrize("name,reason", [
    ("zero.jpg", "empty file"),
    ("text.png", "not an image"),
    ("truncated.jpg", "corrupt image"),
    ("corrupt.jpg", "corrupt image|not an image"),
    ("bomb.png", "too large"),
])
def test_unreadable_files_raise_with_a_reason(name, reason):
    with pytest.raises(DecodeError, match=reason):
        load_image(bad_files()[name], 32)


def test_pixel_limit_is_a_parameter():
    with pytest.raises(DecodeError, match="too large: 40x30"):
        decode_rgb(encode(gradient_rgb(), "PNG"), max_pixels=100)


def test_resize_is_short_side_then_centre_crop():
    # 60 wide x 20 high: red | green | blue thirds; the centre crop must be all green.
    a = np.zeros((20, 60, 3), np.uint8)
    a[:, :20, 0] = 255
    a[:, 20:40, 1] = 255
    a[:, 40:, 2] = 255
    out = load_image(encode(Image.fromarray(a), "PNG"), 10)
    assert out.shape == (10, 10, 3)
    assert (out[:, 2:8, 1] > 200).all() and (out[:, 2:8, 0] < 50).all()


# ---- decode_batch: what training and scoring call ------------------------------------------

def photo_jpeg(w: int, h: int, seed: int = 0) -> bytes:
    """A smooth colour image with a little noise, as JPEG: what photo sets hold."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    a = np.concatenate([x * 255 + 0 * y, y * 255 + 0 * x, (1 - x) * 200 + 0 * y], axis=-1)
    a = (a + rng.normal(0, 6, a.shape)).clip(0, 255).astype(np.uint8)
    return encode(Image.fromarray(a), "JPEG", quality=92)


def test_a_batch_decodes_good_files_in_order_and_names_each_bad_one():
    from raycat.core.decode import decode_batch, decode_one

    good, bad = awkward_good_files(), bad_files()
    names = [n for pair in zip(sorted(good), sorted(bad) + [None] * len(good), strict=False) for n in pair if n]
    blobs = [good[n] if n in good else bad[n] for n in names]
    images, errors = decode_batch(blobs, 24)
    assert images.shape == (len(good), 3, 24, 24) and images.dtype == torch.uint8
    assert [n for n, e in zip(names, errors, strict=True) if e] == [n for n in names if n in bad]
    ok = [n for n, e in zip(names, errors, strict=True) if not e]
    for i, n in enumerate(ok):  # stacked in input order: each matches its own single decode
        assert torch.equal(images[i], decode_one(good[n], 24)), n


def test_jpegs_from_libjpeg_turbo_and_pil_agree_within_rounding():
    from raycat.core.decode import decode_one

    data = photo_jpeg(120, 90)
    fast = decode_one(data, 64).float()  # short side 90 < 4 x 64: libjpeg-turbo + antialiased resize
    pil = torch.from_numpy(load_image(data, 64)).permute(2, 0, 1).float()
    assert fast.shape == pil.shape == (3, 64, 64)
    assert (fast - pil).abs().mean() < 3.0  # two resamplers of the same pixels


def test_an_exif_rotated_jpeg_is_upright_on_every_path():
    from raycat.core.decode import decode_batch

    images, errors = decode_batch([exif_rotated_jpeg()], 16)
    assert errors == [""]
    rows = images[0].float().mean(dim=(0, 2))  # top rows black, bottom white once rotated
    assert rows[:5].mean() < 60 and rows[-5:].mean() > 190


def test_a_thread_pool_gives_the_same_pixels():
    from concurrent.futures import ThreadPoolExecutor

    from raycat.core.decode import decode_batch

    blobs = [photo_jpeg(80 + 7 * i, 60 + 5 * i, seed=i) for i in range(8)] + [bad_files()["truncated.jpg"]]
    plain, e1 = decode_batch(blobs, 32)
    with ThreadPoolExecutor(2) as pool:
        threaded, e2 = decode_batch(blobs, 32, pool=pool)
    assert e1 == e2 and e1[-1] and torch.equal(plain, threaded)


@pytest.mark.gpu
def test_gpu_decode_equals_cpu_decode_within_rounding():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from raycat.core.decode import decode_batch

    blobs = [photo_jpeg(200 + 9 * i, 150 + 4 * i, seed=i) for i in range(16)]
    blobs.append(encode(gradient_rgb(64, 48), "PNG"))  # not a JPEG: the CPU fallback on the GPU path
    blobs.append(bad_files()["truncated.jpg"])  # nvJPEG's batch refuses it: decoded one by one, still skipped
    gpu, eg = decode_batch(blobs, 64, device="cuda")
    cpu, ec = decode_batch(blobs, 64)
    assert gpu.device.type == "cuda" and eg == ec and eg[-1]
    assert (gpu.cpu().float() - cpu.float()).abs().mean() < 2.0
