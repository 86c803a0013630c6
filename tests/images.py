"""Helpers that make image files of every awkward kind, for decode and pipeline tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient_rgb(w: int = 40, h: int = 30) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float64)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float64)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8))


def exif_rotated_jpeg() -> bytes:
    """A 40x20 JPEG, left half black and right half white, tagged 'rotate 90 CW' (orientation 6)."""
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, 20:] = 255
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6
    return encode(img, "JPEG", exif=exif.tobytes(), quality=95)


def bad_files() -> dict[str, bytes]:
    """name -> bytes, for every kind of unreadable file; names carry image extensions."""
    good = encode(gradient_rgb(64, 48), "JPEG")
    return {
        "zero.jpg": b"",
        "text.png": b"this is not an image at all\n",
        "truncated.jpg": good[: len(good) // 2],
        "corrupt.jpg": good[:200] + bytes(range(256)) * 4 + good[-100:],
        "bomb.png": encode(Image.new("1", (9000, 9000)), "PNG"),
    }


def awkward_good_files() -> dict[str, bytes]:
    """name -> bytes, for images that must decode to RGB: every mode conversion and EXIF."""
    rgb = gradient_rgb()
    pal_t = rgb.convert("P", palette=Image.ADAPTIVE, colors=16)
    pal_t.info["transparency"] = 0
    i16 = Image.fromarray((np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16))
    return {
        "gray.png": encode(rgb.convert("L"), "PNG"),
        "palette.gif": encode(rgb.convert("P", palette=Image.ADAPTIVE), "GIF"),
        "palette_transparent.png": encode(pal_t, "PNG"),
        "cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG"),
        "sixteen_bit.png": encode(i16, "PNG"),
        "rgba.png": encode(rgb.convert("RGBA"), "PNG"),
        "la.png": encode(rgb.convert("LA"), "PNG"),
        "upper.JPG": encode(rgb, "JPEG"),
        "image.bmp": encode(rgb, "BMP"),
        "image.webp": encode(rgb, "WEBP"),
        "image.tiff": encode(rgb, "TIFF"),
        "exif.jpeg": exif_rotated_jpeg(),
        "tiny.png": encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
    }
