"""PNG artifacts a person looks at: sample images with captions, log-mel spectrograms.

Pillow only (no matplotlib dependency): a grid of thumbnails with the caption
under each, and spectrograms drawn as images (low frequencies at the bottom).
"""

from __future__ import annotations

import io
import textwrap

import numpy as np
from PIL import Image, ImageDraw

THUMB = 128
CAPTION_H = 36


def image_grid(items: list[tuple[bytes, str]], path: str, cols: int = 4) -> str:
    """items: (encoded image, caption) -> one PNG grid at `path`."""
    from pipelines.data.image import to_rgb

    rows = (len(items) + cols - 1) // cols
    canvas = Image.new("RGB", (cols * THUMB, rows * (THUMB + CAPTION_H)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (data, caption) in enumerate(items):
        img = to_rgb(Image.open(io.BytesIO(data)))
        img.thumbnail((THUMB, THUMB))
        x, y = (i % cols) * THUMB, (i // cols) * (THUMB + CAPTION_H)
        canvas.paste(img, (x + (THUMB - img.width) // 2, y + (THUMB - img.height) // 2))
        lines = textwrap.wrap(caption, 22)[:3]
        draw.multiline_text((x + 2, y + THUMB), "\n".join(lines), fill="black", spacing=0)
    canvas.save(path)
    return path


def _colour(x: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB uint8 on a dark-blue -> yellow ramp."""
    x = np.clip(x, 0.0, 1.0)[..., None]
    lo, mid, hi = np.array([20, 10, 60]), np.array([200, 40, 90]), np.array([250, 240, 80])
    rgb = np.where(x < 0.5, lo + (mid - lo) * (x * 2), mid + (hi - mid) * (x * 2 - 1))
    return rgb.astype(np.uint8)


def spectrogram_grid(items: list[tuple[np.ndarray, str]], path: str, width: int = 480) -> str:
    """items: (log-mel (frames, mels), transcript) -> one PNG, one spectrogram per row."""
    row_h = 128 + CAPTION_H
    canvas = Image.new("RGB", (width, max(1, len(items)) * row_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (mel, text) in enumerate(items):
        mel = np.asarray(mel, dtype=np.float32)  # (frames, mels)
        lo, hi = np.percentile(mel, 2), np.percentile(mel, 99.5)
        img = _colour((mel - lo) / max(hi - lo, 1e-6)).transpose(1, 0, 2)[::-1]  # (mels, frames, 3)
        pic = Image.fromarray(np.ascontiguousarray(img)).resize((width, 128), Image.NEAREST)
        canvas.paste(pic, (0, i * row_h))
        draw.text((2, i * row_h + 130), textwrap.shorten(text, 80), fill="black")
    canvas.save(path)
    return path
