import numpy as np
import pytest
from images import awkward_good_files, bad_files, encode, exif_rotated_jpeg, gradient_rgb
from PIL import Image

from raycat.decode import DecodeError, decode_rgb, load_image


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
