"""Self-attention with per-modality projections, SDPA, masks and the relative position bias."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layout import Layout
from .ops import Linear
from .routing import Experts, maybe_experts, route


class MultiwayAttention(nn.Module):
    """Multi-head self-attention whose q/k/v/out projections and sub-LN are shared or per modality.

    Projections that share routing are fused into one matmul when ``config.fused_qkv`` (``all`` and
    ``ffn`` policies: one ``qkv`` per expert; ``kv`` policy: a shared ``q`` and per-modality ``kv``).
    Attribute names are the letters they produce (``qkv``, ``kv``, ``q``, ``k``, ``v``).

    Args:
        config: model config; ``config.per_modality`` decides which parts have experts.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        per, keys, dim = config.per_modality, config.modalities, config.dim
        self.heads, self.head_dim, self.dim = config.heads, config.head_dim, dim
        routed = "".join(p for p in "qkv" if p in per)
        shared = "".join(p for p in "qkv" if p not in per)
        groups = [g for g in (routed, shared) if g]
        if not config.fused_qkv:
            groups = list(routed) + list(shared)
        self.proj_names = tuple(groups)
        for name in groups:
            n = len(name)
            self.add_module(name, maybe_experts(lambda n=n: Linear(dim, n * dim), keys, name[0] in per))
        self.sub_norm = (
            maybe_experts(lambda: nn.LayerNorm(dim, eps=config.norm_eps), keys, "attn_sub_norm" in per)
            if config.subln
            else None
        )
        self.out = maybe_experts(lambda: Linear(dim, dim), keys, "out" in per)

    def forward(
        self,
        x: torch.Tensor,  # (T, B, C) sequence-first, already normalised
        layout: Layout,
        attn_mask: torch.Tensor | None,  # bool True = attend, or additive float; broadcast to (B, H, T, T)
    ) -> torch.Tensor:  # (T, B, C)
        T, B, C = x.shape
        qkv: dict[str, torch.Tensor] = {}
        for name in self.proj_names:
            y = route(getattr(self, name), x, layout)  # (T, B, n * C)
            # (T, B, n, H, D) -> n x (B, H, T, D): strided views SDPA reads directly; backward is one
            # permute-copy, not n zero-filled slice gradients
            heads = y.view(T, B, len(name), self.heads, self.head_dim).permute(2, 1, 3, 0, 4).unbind(0)
            qkv.update(zip(name, heads))
        q, k, v = qkv["q"], qkv["k"], qkv["v"]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, T, D)
        o = o.permute(2, 0, 1, 3).reshape(T, B, C)  # (T, B, C)
        if self.sub_norm is not None:
            o = route(self.sub_norm, o, layout)
        return route(self.out, o, layout)

    def _linears(self, module: nn.Module) -> list[nn.Linear]:
        return list(module.values()) if isinstance(module, Experts) else [module]

    @torch.no_grad()
    def scale_init(self, scale: float) -> None:
        """Magneto init: scale the v and out projections (weights and biases) by ``scale``."""
        for name in self.proj_names:
            if "v" not in name:
                continue
            i = name.index("v")
            for lin in self._linears(getattr(self, name)):
                lin.weight[i * self.dim : (i + 1) * self.dim].mul_(scale)
                lin.bias[i * self.dim : (i + 1) * self.dim].mul_(scale)
        for lin in self._linears(self.out):
            lin.weight.mul_(scale)
            lin.bias.mul_(scale)


class RelativePositionBias(nn.Module):
    """T5-style bidirectional bucketed relative position bias, one table shared by all blocks.

    Args:
        buckets: number of buckets (half per direction).
        max_distance: distance beyond which all offsets share the last bucket.
        heads: attention heads.
    """

    def __init__(self, buckets: int, max_distance: int, heads: int):
        super().__init__()
        self.buckets, self.max_distance = buckets, max_distance
        self.table = nn.Embedding(buckets, heads)

    def _bucket(self, rel: torch.Tensor) -> torch.Tensor:
        half = self.buckets // 2
        ret = (rel > 0).long() * half
        n = rel.abs()
        max_exact = half // 2
        large = max_exact + (
            torch.log(n.float().clamp(min=1) / max_exact) / math.log(self.max_distance / max_exact) * (half - max_exact)
        ).long()
        large = large.clamp(max=half - 1)
        return ret + torch.where(n < max_exact, n, large)

    def forward(self, length: int, device: torch.device) -> torch.Tensor:  # (1, H, T, T)
        pos = torch.arange(length, device=device)
        rel = pos[None, :] - pos[:, None]  # (T, T) key minus query
        return self.table(self._bucket(rel)).permute(2, 0, 1).unsqueeze(0)


def build_attention_mask(
    padding: torch.Tensor | None,  # (B, T) bool, True = padding
    causal_start: torch.Tensor | None,  # (B,) int64: tokens at >= this index attend causally
    length: int,
    device: torch.device,
) -> torch.Tensor | None:  # bool (B, 1, T|1, T), True = attend; None = attend everywhere
    """Padding and prefix-LM mask for SDPA.

    The prefix-LM mask is bidirectional over the prefix (media and prompt) and causal over the
    response: query i may attend key j when ``j < causal_start`` or ``j <= i``.
    """
    mask = None
    if padding is not None and bool(padding.any()):
        mask = (~padding)[:, None, None, :]  # (B, 1, 1, T)
    if causal_start is not None:
        idx = torch.arange(length, device=device)
        allowed = (idx[None, None, :] < causal_start[:, None, None]) | (idx[None, None, :] <= idx[None, :, None])
        allowed = allowed[:, None]  # (B, 1, T, T)
        mask = allowed if mask is None else (mask & allowed)
    return mask
