"""Multiway blocks: the FFN, drop path, and the pre-LN block whose parts are per modality by policy."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MultiwayAttention
from .config import ModelConfig
from .layout import Layout
from .ops import Linear
from .routing import FUSION, SHARED, Experts, maybe_experts, route


class FeedForward(nn.Module):
    """fc1 -> GELU -> (sub-LN) -> fc2.

    Args:
        dim: model width.
        ffn_dim: inner width.
        subln: LayerNorm between the activation and fc2 (Magneto).
        eps: LayerNorm epsilon.
    """

    def __init__(self, dim: int, ffn_dim: int, subln: bool, eps: float):
        super().__init__()
        self.fc1 = Linear(dim, ffn_dim)
        self.sub_norm = nn.LayerNorm(ffn_dim, eps=eps) if subln else None
        self.fc2 = Linear(ffn_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., C) -> (..., C)
        x = F.gelu(self.fc1(x))  # (..., F)
        if self.sub_norm is not None:
            x = self.sub_norm(x)
        return self.fc2(x)

    @torch.no_grad()
    def scale_init(self, scale: float) -> None:
        for lin in (self.fc1, self.fc2):
            lin.weight.mul_(scale)
            lin.bias.mul_(scale)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the residual branch of whole samples with probability ``p``.
    ``x`` is sequence-first (T, B, C): the batch axis is 1."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((1, x.shape[1], 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class MultiwayBlock(nn.Module):
    """Pre-LN transformer block whose parts are per modality as the config's policy says.

    Args:
        config: the model config (policy, widths, options).
        index: block depth, 0-based; the top ``config.fusion_layers`` blocks get a fusion FFN expert and
            the drop-path rate grows linearly with depth.
    """

    def __init__(self, config: ModelConfig, index: int):
        super().__init__()
        per = config.per_modality
        keys = config.modalities
        dim, eps = config.dim, config.norm_eps
        self.has_fusion = index >= config.layers - config.fusion_layers
        self.drop_path_rate = config.drop_path * index / max(config.layers - 1, 1)

        self.attn_norm = maybe_experts(lambda: nn.LayerNorm(dim, eps=eps), keys, "attn_norm" in per)
        self.attn = MultiwayAttention(config)

        # The FFN sub-layer (its norm and the FFN) gains a fusion expert in the top layers; tokens of
        # monomodal inputs keep using their modality's (or the shared) expert there.
        def ffn_part(make: Callable[[], nn.Module], part: str) -> nn.Module:
            if not self.has_fusion:
                return maybe_experts(make, keys, part in per)
            return Experts(make, (tuple(keys) if part in per else (SHARED,)) + (FUSION,))

        self.ffn_norm = ffn_part(lambda: nn.LayerNorm(dim, eps=eps), "ffn_norm")
        self.ffn = ffn_part(lambda: FeedForward(dim, config.ffn_dim, config.subln, eps), "ffn")

        if config.layer_scale > 0:
            self.attn_scale = nn.Parameter(torch.full((dim,), config.layer_scale))
            self.ffn_scale = nn.Parameter(torch.full((dim,), config.layer_scale))
        else:
            self.attn_scale = self.ffn_scale = None

    def forward(
        self,
        x: torch.Tensor,  # (T, B, C) sequence-first (see routing.py for why)
        layout: Layout,
        attn_mask: torch.Tensor | None,  # bool (B, 1, T|1, T_k) True = attend, or additive float
        cache=None,  # attention.LayerCache: decode against the tokens it holds (see MultiwayAttention)
    ) -> torch.Tensor:  # (T, B, C)
        h = self.attn(route(self.attn_norm, x, layout), layout, attn_mask, cache)
        if self.attn_scale is not None:
            h = h * self.attn_scale
        x = x + drop_path(h, self.drop_path_rate, self.training)
        h = route(self.ffn, route(self.ffn_norm, x, layout), layout)
        if self.ffn_scale is not None:
            h = h * self.ffn_scale
        return x + drop_path(h, self.drop_path_rate, self.training)

    @torch.no_grad()
    def scale_init(self, scale: float) -> None:
        """Magneto init: scale fc1/fc2/out/v weights by ``scale``."""
        self.attn.scale_init(scale)
        ffns = self.ffn.values() if isinstance(self.ffn, Experts) else [self.ffn]
        for ffn in ffns:
            ffn.scale_init(scale)
