"""Modality adapters and their registry.

An adapter turns the raw inputs of one modality into a token sequence with positions added, and says which
tokens are padding. Adapters never interact (ONE-PEACE); the encoder concatenates their outputs in the
order of ``config.modalities``. A new modality is an adapter registered here plus its name in
``config.modalities`` (which gives it its own experts); the encoder needs no edit.

Input keys (all batch-first):

* vision: ``pixels`` (B, 3, H, W) float; optional ``pixel_mask`` (B, N_patches) bool, True = replace the
  patch by the mask token (BEiT-3's ``vision_masked_position``).
* text: ``text_ids`` (B, L) int64; optional ``text_padding_mask`` (B, L) bool, True = padding, and
  ``text_positions`` (B, L) int64, each token's index in its text (default 0..L-1; decoding uses it).
* audio: ``fbank`` (B, T, n_mels) float; optional ``fbank_frames`` (B,) valid frames per sample and
  ``fbank_mask`` (B, N_audio_patches) bool, True = replace the patch by the mask token.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


class AdapterOutput(NamedTuple):
    """Tokens of one modality: ``tokens`` (B, N, C) with positions added, ``padding`` (B, N) bool or None.

    A NamedTuple, not a dataclass: DeepSpeed ZeRO-3 finds a module's output tensors (to gather the
    module's parameters again for backward) only inside tensors, tuples, lists and dicts."""

    tokens: torch.Tensor
    padding: torch.Tensor | None = None


class ModalityAdapter(nn.Module):
    """Base class: ``input_keys[0]`` present in the inputs means the modality is present."""

    input_keys: tuple[str, ...] = ()

    def present(self, inputs: Mapping[str, torch.Tensor]) -> bool:
        return inputs.get(self.input_keys[0]) is not None

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> AdapterOutput:  # pragma: no cover - abstract
        raise NotImplementedError


_ADAPTERS: dict[str, Callable[[ModelConfig], ModalityAdapter]] = {}


def register_modality(name: str, factory: Callable[[ModelConfig], ModalityAdapter]) -> None:
    """Register an adapter factory under a modality name (unique; ``fusion``/``shared`` are reserved)."""
    if name in _ADAPTERS:
        raise KeyError(f"modality {name!r} is already registered")
    if name in ("fusion", "shared"):
        raise KeyError(f"{name!r} is a reserved routing key")
    _ADAPTERS[name] = factory


def unregister_modality(name: str) -> None:
    """Remove a registered modality (tests use it to clean up toy modalities)."""
    _ADAPTERS.pop(name)


def registered_modalities() -> tuple[str, ...]:
    return tuple(_ADAPTERS)


def build_adapter(name: str, config: ModelConfig) -> ModalityAdapter:
    if name not in _ADAPTERS:
        raise KeyError(f"modality {name!r} is not registered; registered: {sorted(_ADAPTERS)}")
    return _ADAPTERS[name](config)


def interpolate_positions(table: torch.Tensor, old_grid: int, new_grid: int, extra: int) -> torch.Tensor:
    """Resize a 2-D learned position table ``(extra + old_grid**2, C)`` to ``(extra + new_grid**2, C)``.

    The first ``extra`` rows (fairseq offset rows and the CLS row) are kept; the grid is resized bicubically,
    as BEiT-3 does when fine-tuning at another resolution.
    """
    if old_grid == new_grid:
        return table
    head, grid = table[:extra], table[extra:]
    C = grid.shape[-1]
    grid = grid.reshape(1, old_grid, old_grid, C).permute(0, 3, 1, 2).float()  # (1, C, g, g)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid * new_grid, C).to(table.dtype)
    return torch.cat([head, grid], dim=0)


class ConvStem(nn.Module):
    """One strided convolution: (B, 3, H, W) -> (B, C, H/p, W/p) (BEiT-3's patch embedding)."""

    def __init__(self, in_chans: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class HierarchicalMLPStem(nn.Module):
    """ONE-PEACE's hierarchical MLP stem: non-overlapping convs p/4, 2, 2 with LN + GELU between.

    Patches never mix (every kernel equals its stride), so masking patches before or after the stem is
    equivalent, which is why ONE-PEACE prefers it for masked image modelling.
    """

    def __init__(self, in_chans: int, dim: int, patch: int):
        super().__init__()
        if patch % 4:
            raise ValueError(f"the hmlp stem needs a patch size divisible by 4, got {patch}")
        hidden = dim // 4
        self.conv1 = nn.Conv2d(in_chans, hidden, kernel_size=patch // 4, stride=patch // 4)
        self.norm1 = nn.LayerNorm(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, kernel_size=2, stride=2)
        self.norm2 = nn.LayerNorm(hidden)
        self.conv3 = nn.Conv2d(hidden, dim, kernel_size=2, stride=2)

    @staticmethod
    def _norm_act(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))  # LN over channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._norm_act(self.norm1, self.conv1(x))
        x = self._norm_act(self.norm2, self.conv2(x))
        return self.conv3(x)


class VisionAdapter(ModalityAdapter):
    """Patch embedding + CLS token + learned absolute positions (+ mask token for MIM).

    Args:
        config: model config (``config.vision`` for the stem and resolution).
    """

    input_keys = ("pixels", "pixel_mask")

    def __init__(self, config: ModelConfig):
        super().__init__()
        v, dim = config.vision, config.dim
        self.grid, self.patch, self.offset = v.grid, v.patch_size, config.position_offset
        stems = {"conv": ConvStem, "hmlp": HierarchicalMLPStem}
        if v.stem not in stems:
            raise ValueError(f"unknown vision stem {v.stem!r}; known: {sorted(stems)}")
        self.stem = stems[v.stem](v.in_chans, dim, v.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        # rows: `offset` unused (fairseq), CLS, then the patch grid row-major
        self.pos_embed = nn.Parameter(torch.zeros(self.offset + 1 + v.num_patches, dim))
        if v.abstractor_queries:
            self.abstractor = VisualAbstractor(dim, config.heads, v.abstractor_queries, config.norm_eps)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> AdapterOutput:
        pixels = inputs["pixels"]  # (B, 3, H, W)
        x = self.stem(pixels).flatten(2).transpose(1, 2)  # (B, N, C)
        B, N, _ = x.shape
        mask = inputs.get("pixel_mask")
        if mask is not None and hasattr(self, "abstractor"):
            raise ValueError("the visual abstractor has no per-patch outputs: pixel_mask (masked image "
                             "modeling) cannot be used with vision.abstractor_queries")
        if mask is not None:
            w = mask.unsqueeze(-1).to(x.dtype)  # (B, N, 1)
            x = x * (1 - w) + self.mask_token.to(x.dtype) * w
        x = torch.cat([self.cls_token.expand(B, -1, -1).to(x.dtype), x], dim=1)  # (B, 1 + N, C)
        pos = self.pos_embed
        grid = int(math.isqrt(N))
        if grid != self.grid:
            # another resolution than the config's: resize the table on the fly
            pos = interpolate_positions(pos, self.grid, grid, self.offset + 1)
        x = x + pos[self.offset : self.offset + 1 + N]  # (B, 1 + N, C)
        if hasattr(self, "abstractor"):
            x = torch.cat([x[:, :1], self.abstractor(x[:, 1:])], dim=1)  # (B, 1 + K, C)
        return AdapterOutput(x)


class VisualAbstractor(nn.Module):
    """mPLUG-Owl2's visual abstractor, one block: K learned queries cross-attend to the N patch tokens
    (pre-norm attention, then a GELU MLP, both residual on the queries), so the sequence holds K image
    tokens instead of N.

    Args:
        dim: model width.
        heads: attention heads.
        queries: K.
        eps: LayerNorm epsilon.
    """

    def __init__(self, dim: int, heads: int, queries: int, eps: float = 1e-5):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(1, queries, dim) * 0.02)  # (1, K, C), learned: their own positions
        self.norm_q, self.norm_kv, self.norm_mlp = (nn.LayerNorm(dim, eps=eps) for _ in range(3))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """patches (B, N, C) with positions -> (B, K, C)."""
        q = self.queries.expand(patches.shape[0], -1, -1).to(patches.dtype)  # (B, K, C)
        kv = self.norm_kv(patches)
        q = q + self.attn(self.norm_q(q), kv, kv, need_weights=False)[0]
        return q + self.mlp(self.norm_mlp(q))


class TextAdapter(ModalityAdapter):
    """Token embedding + learned absolute positions.

    Args:
        config: model config (``config.text`` for vocabulary and position table size).
    """

    input_keys = ("text_ids", "text_padding_mask")

    def __init__(self, config: ModelConfig):
        super().__init__()
        t = config.text
        self.offset = config.position_offset
        self.embed = nn.Embedding(t.vocab_size, config.dim)
        self.pos_embed = nn.Parameter(torch.zeros(t.max_positions, config.dim))

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> AdapterOutput:
        ids = inputs["text_ids"]  # (B, L)
        L = ids.shape[1]
        positions = inputs.get("text_positions")  # (B, L) or None
        last = L if positions is None else int(positions.max()) + 1
        if self.offset + last > self.pos_embed.shape[0]:
            raise ValueError(f"text of {last} tokens exceeds the position table ({self.pos_embed.shape[0]} rows, "
                             f"offset {self.offset})")
        if positions is None:
            x = self.embed(ids) + self.pos_embed[self.offset : self.offset + L]  # (B, L, C)
        else:
            x = self.embed(ids) + self.pos_embed[self.offset + positions.long()]  # (B, L, C)
        return AdapterOutput(x, inputs.get("text_padding_mask"))


class AudioAdapter(ModalityAdapter):
    """Patches of ``patch_frames`` consecutive log-mel frames -> linear -> CLS + learned positions.

    Args:
        config: model config (``config.audio`` for mel bins, frames per patch and table size).
    """

    input_keys = ("fbank", "fbank_frames", "fbank_mask")

    def __init__(self, config: ModelConfig):
        super().__init__()
        a, dim = config.audio, config.dim
        self.patch, self.n_mels, self.offset = a.patch_frames, a.n_mels, config.position_offset
        self.proj = nn.Linear(a.n_mels * a.patch_frames, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(self.offset + a.max_tokens, dim))

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> AdapterOutput:
        fbank = inputs["fbank"]  # (B, T, M)
        B, T, M = fbank.shape
        if M != self.n_mels:
            raise ValueError(f"fbank has {M} mel bins, the audio adapter expects {self.n_mels}")
        n = -(-T // self.patch)  # ceil: a partial last patch is zero-padded
        fbank = F.pad(fbank, (0, 0, 0, n * self.patch - T))
        x = self.proj(fbank.reshape(B, n, self.patch * M))  # (B, N, C)
        mask = inputs.get("fbank_mask")
        if mask is not None:
            w = mask.unsqueeze(-1).to(x.dtype)
            x = x * (1 - w) + self.mask_token.to(x.dtype) * w
        x = torch.cat([self.cls_token.expand(B, -1, -1).to(x.dtype), x], dim=1)  # (B, 1 + N, C)
        if self.offset + n + 1 > self.pos_embed.shape[0]:
            raise ValueError(f"audio of {T} frames gives {n + 1} tokens, over the position table")
        x = x + self.pos_embed[self.offset : self.offset + n + 1]
        padding = None
        frames = inputs.get("fbank_frames")
        if frames is not None:
            valid = -(-frames.to(x.device).long() // self.patch)  # (B,) patches holding real frames
            idx = torch.arange(n, device=x.device)
            padding = torch.cat(
                [torch.zeros(B, 1, dtype=torch.bool, device=x.device), idx[None, :] >= valid[:, None]], dim=1
            )  # (B, 1 + N); CLS is never padding
        return AdapterOutput(x, padding)


register_modality("vision", VisionAdapter)
register_modality("text", TextAdapter)
register_modality("audio", AudioAdapter)
