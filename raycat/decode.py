"""Robust image decoding: bytes in, a size x size RGB uint8 array out, or a reason it can't be.

Every mode PIL opens becomes RGB: grayscale, palette (with or without transparency), CMYK, 16- and
32-bit integer, float, and alpha (composited over white, as a viewer shows it). EXIF orientation
is applied. A file that can't be decoded raises DecodeError with a short reason, which the
pipeline records instead of failing.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

# Pixels (width x height) above which an image counts as unreadable: a guard against
# decompression bombs. 8,000 x 8,000 = 64 MP, more than any camera photo needs for a 224 px model.
MAX_PIXELS = 64_000_000

# We check the pixel count ourselves, before decoding; PIL's own check would only warn.
Image.MAX_IMAGE_PIXELS = None
# A truncated file must fail, not decode as a grey-padded image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class DecodeError(ValueError):
    """The bytes are not a usable image; str(e) is the reason written to skipped.csv."""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # PIL's convert("RGB") clips these at 255; rescale the real range to 8 bits instead.
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or (img.mode == "I" and a.max(initial=0) > 255) else 255.0
        if img.mode == "F":
            lo, hi = float(a.min(initial=0)), float(a.max(initial=1))
            a = (a - lo) / (hi - lo or 1.0) * 255.0
        else:
            a = a / top * 255.0
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([g, g, g], axis=-1))
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_rgb(data: bytes, max_pixels: int = MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Decode to an upright RGB PIL image, or raise DecodeError(reason)."""
    if not data:
        raise DecodeError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise DecodeError(f"too large: {w}x{h} pixels is over the limit of {max_pixels}")
            if w < 1 or h < 1:
                raise DecodeError(f"no pixels: {w}x{h}")
            if draft_size and img.format == "JPEG":
                # JPEG can decode at 1/2, 1/4, 1/8 scale for free; keep at least draft_size.
                img.draft("RGB", (draft_size, draft_size))
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except DecodeError:
        raise
    except Image.UnidentifiedImageError:
        raise DecodeError("not an image (unknown format)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DecodeError(f"corrupt image: {msg}") from None


def resize_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """Resize the short side to `size`, centre-crop to size x size; uint8 array (size, size, 3)."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


def load_image(data: bytes, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Bytes to the cached form every later step starts from: (size, size, 3) uint8 RGB."""
    # Ask JPEG for a draft no smaller than twice the target: the resize still sees detail.
    return resize_center_crop(decode_rgb(data, max_pixels, draft_size=2 * size), size)
