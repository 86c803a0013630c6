"""Robust image decoding: file bytes in, size x size RGB uint8 pixels out, or a reason they can't be.

Every mode PIL opens becomes RGB: grayscale, palette (with or without transparency), CMYK, 16- and
32-bit integer, float, and alpha (composited over white, as a viewer shows it). EXIF orientation
is applied. A file that can't be decoded gets a short reason, which the caller records instead of
failing: one bad file never stops a batch.

`decode_batch` is what training and scoring call: bytes travel to the process that trains or
scores, and pixels are made there, on its device. Plain JPEGs (RGB or grey, the bulk of any photo
set) go through libjpeg-turbo (torchvision) on the CPU, or nvJPEG in one batched call on a GPU;
everything else, and any JPEG those decoders refuse, goes through PIL. Each path resizes the short
side to `size` with antialiasing and centre-crops.
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
    return np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy needs one


def load_image(data: bytes, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Bytes to the cached form every later step starts from: (size, size, 3) uint8 RGB."""
    # Ask JPEG for a draft no smaller than twice the target: the resize still sees detail.
    return resize_center_crop(decode_rgb(data, max_pixels, draft_size=2 * size), size)


# ---- batches: the form training and scoring consume -------------------------------------------

# A JPEG whose short side is at least this many times the target goes through PIL: its DCT-domain
# downscaling (draft) decodes a 1/2, 1/4 or 1/8 size image for a fraction of the work, which beats
# libjpeg-turbo's full decode (bench/RESULTS.md, decode). Smaller JPEGs go through libjpeg-turbo.
DRAFT_FACTOR = 4
_FAST_JPEG_MODES = ("RGB", "L")


def _header(data: bytes, max_pixels: int) -> tuple[str, int, int, str, int]:
    """(format, width, height, mode, EXIF orientation) from the header alone, or DecodeError."""
    if not data:
        raise DecodeError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            orientation = int(img.getexif().get(0x0112, 1)) if img.format == "JPEG" else 1
    except Image.UnidentifiedImageError:
        raise DecodeError("not an image (unknown format)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DecodeError(f"corrupt image: {msg}") from None
    if w * h > max_pixels:
        raise DecodeError(f"too large: {w}x{h} pixels is over the limit of {max_pixels}")
    if w < 1 or h < 1:
        raise DecodeError(f"no pixels: {w}x{h}")
    return img.format or "", w, h, img.mode, orientation


def _resize_crop_chw(x, size: int):
    """uint8 (3, H, W) tensor -> short side to `size` (bilinear, antialiased), centre-cropped."""
    import torchvision.transforms.v2.functional as TF

    x = TF.resize(x, size, antialias=True)
    return TF.center_crop(x, [size, size])


def _tv_decode_jpeg(data, device):
    """libjpeg-turbo (CPU) or nvJPEG (CUDA) through torchvision; raises on a file they refuse."""
    import torch
    import torchvision.io as tio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 warns that its decoders move to TorchCodec
        if isinstance(data, list):
            raws = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]
            return tio.decode_jpeg(raws, mode=tio.ImageReadMode.RGB, device=device)
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return tio.decode_jpeg(raw, mode=tio.ImageReadMode.RGB, apply_exif_orientation=True)


def decode_one(data: bytes, size: int, max_pixels: int = MAX_PIXELS):
    """One file on the CPU: uint8 (3, size, size) tensor, or DecodeError(reason)."""
    import torch

    fmt, w, h, mode, _ = _header(data, max_pixels)
    if fmt == "JPEG" and mode in _FAST_JPEG_MODES and min(w, h) < DRAFT_FACTOR * size:
        try:
            return _resize_crop_chw(_tv_decode_jpeg(data, "cpu"), size)
        except RuntimeError:
            pass  # PIL decides: it decodes what libjpeg-turbo refused, or names the fault
    return torch.from_numpy(load_image(data, size, max_pixels)).permute(2, 0, 1).contiguous()


def decode_batch(blobs: list[bytes], size: int, device=None, pool=None,
                 max_pixels: int = MAX_PIXELS):
    """Decode a batch of files for `device`: (uint8 (n_ok, 3, size, size) on the device, errors).

    `errors[i]` is "" for a file that decoded (they are stacked in order) and the reason otherwise.
    On CUDA, plain JPEGs are decoded together by nvJPEG and resized on the GPU; the rest (and any
    nvJPEG refuses) are decoded on the CPU. `pool` (a ThreadPoolExecutor) spreads the CPU decodes
    over threads: PIL and libjpeg-turbo release the GIL while they work.
    """
    import torch

    device = torch.device(device or "cpu")
    n = len(blobs)
    out: list = [None] * n
    errors = [""] * n
    cpu_idx = list(range(n))
    if device.type == "cuda":
        gpu_idx = []
        for i, data in enumerate(blobs):
            try:
                fmt, _, _, mode, orientation = _header(data, max_pixels)
            except DecodeError as e:
                errors[i] = str(e)
                continue
            # nvJPEG applies no EXIF orientation: rotated photos take the CPU path.
            if fmt == "JPEG" and mode in _FAST_JPEG_MODES and orientation == 1:
                gpu_idx.append(i)
        try:
            decoded = _tv_decode_jpeg([blobs[i] for i in gpu_idx], device) if gpu_idx else []
            for i, x in zip(gpu_idx, decoded, strict=True):
                out[i] = _resize_crop_chw(x, size)
        except RuntimeError:
            gpu_idx = []  # one bad file fails the whole batched call: decode these one by one instead
        cpu_idx = [i for i in range(n) if out[i] is None and not errors[i]]

    def one(i: int):
        try:
            return i, decode_one(blobs[i], size, max_pixels), ""
        except DecodeError as e:
            return i, None, str(e)
        except MemoryError:
            return i, None, "unreadable: out of memory while decoding"

    results = pool.map(one, cpu_idx) if pool is not None and len(cpu_idx) > 1 else map(one, cpu_idx)
    for i, x, err in results:
        if err:
            errors[i] = err
        else:
            out[i] = x.to(device, non_blocking=True) if device.type == "cuda" else x
    good = [x for x in out if x is not None]
    images = torch.stack(good) if good else torch.zeros(0, 3, size, size, dtype=torch.uint8, device=device)
    return images, errors
