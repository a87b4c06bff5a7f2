"""Image decode + validate (corpus) and pixels at model resolution (shards). Pillow only."""

from __future__ import annotations

import io
import warnings
from typing import Optional, TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFile, ImageOps

from pipelines.data.text import Rejected, error_detail

if TYPE_CHECKING:  # config classes for annotations only: pipelines.data does not import the stages
    from pipelines.stages.corpus import ImageLimits

SUPPORTED = {"JPEG", "PNG", "WEBP"}
UNSUPPORTED_EXTS = {"gif", "bmp", "tif", "tiff", "avif", "heic", "svg", "ico"}

# Truncated files must fail, not decode half grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    """Open lazily and check the header before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            # Pillow warns (and above 2× its own limit raises) on huge images; our own
            # max_pixels check below decides, so silence its warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise Rejected("decompression_bomb", str(e)[:200]) from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is a corrupt image
        raise Rejected("corrupt_image", error_detail(e)) from None
    if img.format not in SUPPORTED:
        raise Rejected("unsupported_format", f"image format {img.format}")
    w, h = img.size
    if w * h > limits.max_pixels:
        raise Rejected("decompression_bomb", f"{w}x{h} > max_pixels {limits.max_pixels}")
    return img


def normalize_image(data: Optional[bytes], limits: ImageLimits, ext: str = "") -> Optional[bytes]:
    """Encoded bytes -> validated JPEG/PNG bytes (None when absent). Raises Rejected.

    Upright (EXIF orientation applied), RGB, alpha composited on white, longer side at
    most max_side. An RGB JPEG that needs none of that is kept byte for byte; anything
    else is re-encoded as PNG (lossless, deterministic).
    """
    if data is None:
        return None
    if ext.lower() in UNSUPPORTED_EXTS:
        raise Rejected("unsupported_format", f"image extension .{ext}")
    if len(data) > limits.max_bytes:
        raise Rejected("too_large", f"{len(data)} bytes > max_bytes {limits.max_bytes}")
    img = _open(data, limits)
    w, h = img.size
    if min(w, h) < limits.min_side:
        raise Rejected("too_small", f"{w}x{h}, min_side {limits.min_side}")
    try:
        orientation = img.getexif().get(0x0112, 1)
        img.load()  # full decode: catches truncation
    except Exception as e:  # noqa: BLE001
        raise Rejected("corrupt_image", error_detail(e)) from None
    keep = (img.format == "JPEG" and img.mode == "RGB" and orientation in (0, 1)
            and max(w, h) <= limits.max_side)
    if keep:
        return data
    img = to_rgb(ImageOps.exif_transpose(img))
    if max(img.size) > limits.max_side:
        scale = limits.max_side / max(img.size)
        size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
        img = img.resize(size, Image.BICUBIC)
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=3)
    return out.getvalue()


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode -> RGB; transparent pixels become white (clip-art stamps are drawn on white)."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        canvas = Image.new("RGBA", img.size, (255, 255, 255, 255))
        canvas.alpha_composite(img)
        return canvas.convert("RGB")
    if img.mode == "I;16" or img.mode == "I":
        img = img.point(lambda v: v / 256).convert("L")  # 16-bit greyscale -> 8-bit
    return img.convert("RGB")


def image_pixels(data: bytes, resolution: int) -> np.ndarray:
    """Validated image bytes -> uint8 array (3, R, R): shorter side resized to R, centre crop.

    draft() lets the JPEG decoder skip to a scale >= the target (much faster on big
    photos); the resize is bicubic, with reducing_gap for speed at little cost.
    """
    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG":
        img.draft("RGB", (resolution, resolution))
    img = to_rgb(img)
    w, h = img.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)  # centre square
    img = img.resize((resolution, resolution), Image.BICUBIC, box=box, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()  # (H, W, 3) -> (3, H, W)


def pixels_png(pixels: bytes, resolution: int, max_side: int = 0) -> bytes:
    """Stored pixels (uint8 3×R×R, row-major) -> PNG bytes, shrunk to ``max_side`` px when larger (0: as is)."""
    chw = np.frombuffer(pixels, dtype=np.uint8).reshape(3, resolution, resolution)
    img = Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0)), "RGB")
    if max_side and resolution > max_side:
        img = img.resize((max_side, max_side), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
