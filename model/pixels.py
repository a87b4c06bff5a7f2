"""Pixels between the shards' uint8 layout and the model: one normalisation, one patch layout.

The shards store images as uint8 (3, R, R). The model (vision adapter, MIM pixel targets, the visual
tokenizer) sees float pixels in [-1, 1]: BEiT-3 normalises with mean = std = 0.5 per channel. Patches are
row-major over the grid, each flattened as (P, P, C), the order the vision adapter's tokens come in.
"""

from __future__ import annotations

import torch

PIXEL_MEAN, PIXEL_STD = 0.5, 0.5


def to_unit_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, H, W) in [0, 1], a fresh tensor (the caller's uint8 one is kept)."""
    return pixels.float().div_(255.0)


def normalize_pixels_(x: torch.Tensor) -> torch.Tensor:
    """float pixels in [0, 1] -> [-1, 1], in place (the caller owns ``x``)."""
    return x.sub_(PIXEL_MEAN).div_(PIXEL_STD)


def to_float_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, R, R) -> float (B, 3, R, R) in [-1, 1]; float input passes through unchanged."""
    if pixels.dtype == torch.uint8:
        # in place on the fresh float copy: the same operations in the same order as
        # `(x / 255 - mean) / std` (bitwise the same values) without two more (B, 3, R, R) buffers
        return normalize_pixels_(to_unit_pixels(pixels))
    return pixels


def to_uint8_pixels(x: torch.Tensor) -> torch.Tensor:
    """float pixels in [-1, 1] (clamped) -> uint8, the inverse of ``to_float_pixels`` up to rounding."""
    # (x * std + mean) * 255, written for mean = std = 0.5 (asserted), so the rounding is that of (x + 1) * 127.5
    assert PIXEL_MEAN == PIXEL_STD == 0.5
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, P*P*C), patches row-major like the vision adapter's tokens."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // patch, patch, W // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // patch) * (W // patch), patch * patch * C)


def normalize_patches(t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(..., D) patches -> zero mean, unit variance each (MAE's norm_pix): a pixel target that is the
    patch's structure, not its brightness."""
    mean, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True)
    return (t - mean) / (var + eps).sqrt()


def unpatchify(x: torch.Tensor, patch: int, channels: int = 3) -> torch.Tensor:
    """(B, N, P*P*C) -> (B, C, H, W); the inverse of ``patchify`` for a square grid."""
    B, N, _ = x.shape
    g = int(N ** 0.5)
    x = x.reshape(B, g, g, patch, patch, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, channels, g * patch, g * patch)
