"""The tokenizer's PNG artifact: images beside their reconstruction, and a code-usage histogram.

Pillow only (like `pipelines.data.plots`). Reconstructions exist for the pixel target only; with a
teacher target the right column shows each patch coloured by its code id instead.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

THUMB = 128
HIST_H = 160


def _thumb(chw: np.ndarray) -> Image.Image:
    return Image.fromarray(chw.transpose(1, 2, 0)).resize((THUMB, THUMB), Image.NEAREST)


def _ids_image(ids: np.ndarray, codebook_size: int) -> np.ndarray:
    """(N,) ids -> (3, g, g) uint8: each code a fixed pseudo-random colour."""
    g = int(round(len(ids) ** 0.5))
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, size=(codebook_size, 3), dtype=np.uint8)
    return palette[ids].reshape(g, g, 3).transpose(2, 0, 1)


def tokenizer_figure(originals: np.ndarray, recons: np.ndarray | None, ids: np.ndarray,
                     counts: np.ndarray, path: str) -> str:
    """Write the artifact.

    Args:
        originals: (n, 3, R, R) uint8 images.
        recons: (n, 3, R, R) uint8 reconstructions, or None (teacher target).
        ids: (n, N) code ids of the images.
        counts: (K,) how often each code was used over the validation images.
        path: output PNG.
    """
    n, K = len(originals), len(counts)
    width = max(2 * THUMB, 512)
    canvas = Image.new("RGB", (width, n * THUMB + HIST_H + 20), "white")
    for i in range(n):
        canvas.paste(_thumb(originals[i]), (0, i * THUMB))
        right = recons[i] if recons is not None else _ids_image(ids[i], K)
        canvas.paste(_thumb(right), (THUMB, i * THUMB))
    draw = ImageDraw.Draw(canvas)
    top = n * THUMB + 16
    # histogram of code usage, codes sorted by frequency (a collapsed codebook is one tall bar)
    order = np.sort(counts)[::-1].astype(float)
    peak = max(order.max(), 1.0)
    bar = width / K
    for k, c in enumerate(order):
        h = (HIST_H - 4) * c / peak
        draw.rectangle([k * bar, top + HIST_H - h, (k + 1) * bar, top + HIST_H], fill=(60, 90, 200))
    used = int((counts > 0).sum())
    draw.text((4, top - 14), f"code usage (sorted): {used}/{K} codes used", fill="black")
    canvas.save(path)
    return path
