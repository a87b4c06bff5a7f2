"""Masks for masked data modeling: random token masks (text), block-wise patch masks (image, BEiT),
and 1-D span masks over audio patches (ONE-PEACE / wav2vec2 style).

All functions take an explicit ``torch.Generator`` so a step's masks are reproducible from a seed (resume
equivalence depends on it) and return bool tensors where True = masked.
"""

from __future__ import annotations

import math

import torch


def random_token_mask(valid: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mask ``round(ratio * n_valid)`` tokens per row, chosen uniformly among the valid ones.

    Args:
        valid: (B, L) bool, True where a token may be masked (not padding, not bos/eos).
        ratio: fraction of the valid tokens to mask (15% for text-only, 50% in pairs, BEiT-3).
        generator: RNG for reproducible masks.
    Returns:
        (B, L) bool mask; at least one token per row that has a valid token.
    """
    B, L = valid.shape
    scores = torch.rand(B, L, generator=generator, device="cpu").to(valid.device)  # (B, L)
    scores = scores.masked_fill(~valid, 2.0)  # invalid positions sort last
    n_valid = valid.sum(1)  # (B,)
    n_mask = (n_valid.float() * ratio).round().long().clamp(min=1)
    n_mask = torch.minimum(n_mask, n_valid)
    ranks = scores.argsort(1).argsort(1)  # (B, L) rank of each position's score
    return ranks < n_mask[:, None]


def block_mask(batch: int, grid: int, ratio: float, generator: torch.Generator | None = None,
               min_block: int = 16, min_aspect: float = 0.3) -> torch.Tensor:
    """BEiT's block-wise masking: add random rectangles until ``ratio`` of the patches are masked.

    Blocks have at least ``min_block`` patches (clipped to what is left) and an aspect ratio in
    [min_aspect, 1/min_aspect]; BEiT-3 masks 40% (75 of 196 patches at 224 px).

    Args:
        batch: number of masks.
        grid: patches per side (N = grid * grid).
        ratio: target masked fraction; the result has exactly ``round(ratio * N)`` masked patches.
        generator: RNG for reproducible masks.
    Returns:
        (batch, grid * grid) bool.
    """
    n = grid * grid
    target = max(1, int(round(ratio * n)))
    masks = torch.zeros(batch, grid, grid, dtype=torch.bool)
    log_lo, log_hi = math.log(min_aspect), math.log(1 / min_aspect)

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand((), generator=generator).item()

    for b in range(batch):
        m = masks[b]
        for _ in range(10 * n):  # bounded: each try adds >= 0 patches
            left = target - int(m.sum())
            if left <= 0:
                break
            area = uniform(min(min_block, left), max(min(min_block, left), min(left, 0.4 * n)))
            aspect = math.exp(uniform(log_lo, log_hi))
            h = max(1, min(grid, int(round(math.sqrt(area * aspect)))))
            w = max(1, min(grid, int(round(math.sqrt(area / aspect)))))
            top = int(torch.randint(0, grid - h + 1, (), generator=generator))
            lft = int(torch.randint(0, grid - w + 1, (), generator=generator))
            block = m[top:top + h, lft:lft + w]
            new = (~block).nonzero()
            if len(new) > left:  # never overshoot: keep only `left` of the new patches
                keep = new[:left]
                block[keep[:, 0], keep[:, 1]] = True
            else:
                block.fill_(True)
        left = target - int(m.sum())
        if left > 0:  # the loop ran out of tries (tiny grids): fill at random
            free = (~m.flatten()).nonzero().flatten()
            pick = free[torch.randperm(len(free), generator=generator)[:left]]
            m.view(-1)[pick] = True
    return masks.flatten(1)


def span_mask(valid: torch.Tensor, ratio: float, span: int = 5,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """1-D blocks of ``span`` consecutive positions (audio patches) until ``ratio`` of the valid ones
    are masked (ONE-PEACE: 55% of audio with blocks of 5).

    Args:
        valid: (B, N) bool, True where a position holds real audio.
        ratio: target fraction of the valid positions.
        span: block length.
        generator: RNG.
    Returns:
        (B, N) bool, masked positions only where ``valid``; exactly ``round(ratio * n_valid)`` (>= 1).
    """
    B, N = valid.shape
    out = torch.zeros(B, N, dtype=torch.bool)
    valid_cpu = valid.cpu()
    for b in range(B):
        n = int(valid_cpu[b].sum())
        if n == 0:
            continue
        target = max(1, int(round(ratio * n)))
        idx = valid_cpu[b].nonzero().flatten()  # positions of real audio
        m = torch.zeros(n, dtype=torch.bool)
        starts = torch.randperm(n, generator=generator)
        for s in starts.tolist():
            if int(m.sum()) >= target:
                break
            m[s:s + span] = True
        extra = int(m.sum()) - target
        if extra > 0:  # trim the overshoot of the last block from its end
            on = m.nonzero().flatten()
            m[on[-extra:]] = False
        out[b, idx[m]] = True
    return out.to(valid.device)
