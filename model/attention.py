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
        attn_mask: torch.Tensor | None,  # bool True = attend, or additive float; broadcast to (B, H, T, T_k)
        cache: "LayerCache | None" = None,
    ) -> torch.Tensor:  # (T, B, C)
        """With ``cache``: the keys and values of ``x`` are appended to it, and ``x``'s queries attend to
        everything the cache holds (earlier tokens and these): ``attn_mask`` then spans those T_k keys."""
        T, B, C = x.shape
        qkv: dict[str, torch.Tensor] = {}
        for name in self.proj_names:
            y = route(getattr(self, name), x, layout)  # (T, B, n * C)
            # (T, B, n, H, D) -> n x (B, H, T, D): strided views SDPA reads directly; backward is one
            # permute-copy, not n zero-filled slice gradients
            heads = y.view(T, B, len(name), self.heads, self.head_dim).permute(2, 1, 3, 0, 4).unbind(0)
            qkv.update(zip(name, heads))
        q, k, v = qkv["q"], qkv["k"], qkv["v"]
        if cache is not None:
            k, v = cache.append(k, v)  # (B, H, T_k, D): cached tokens keep the experts they were computed with
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


class LayerCache:
    """Keys and values of one block's attention, for decoding one token at a time (litgpt's ``KVCache``).

    Tensors are ``(B, H, T, D)``, in the order tokens were appended; ``reorder`` follows beam search. They
    live in buffers with room to grow (doubled when full), so a decode step writes its one token in place
    instead of copying everything cached (what ``torch.cat`` per step would do: O(T) per step, O(T²) per
    answer); ``append`` returns views of the filled part.
    """

    def __init__(self) -> None:
        self._k: torch.Tensor | None = None  # (B, H, capacity, D)
        self._v: torch.Tensor | None = None
        self.length = 0

    @property
    def k(self) -> torch.Tensor | None:
        return None if self._k is None else self._k[:, :, : self.length]

    @property
    def v(self) -> torch.Tensor | None:
        return None if self._v is None else self._v[:, :, : self.length]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new tokens' ``k``, ``v`` (B, H, T_new, D); returns everything held."""
        n, t = self.length, k.shape[2]
        if self._k is None or n + t > self._k.shape[2]:
            capacity = max(2 * (n + t), n + t + 64)
            grown_k = k.new_empty(k.shape[0], k.shape[1], capacity, k.shape[3])
            grown_v = v.new_empty(v.shape[0], v.shape[1], capacity, v.shape[3])
            if n:
                grown_k[:, :, :n], grown_v[:, :, :n] = self.k, self.v
            self._k, self._v = grown_k, grown_v
        self._k[:, :, n : n + t] = k
        self._v[:, :, n : n + t] = v
        self.length = n + t
        return self.k, self.v

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (B',) of the batch, in that order."""
        self._k, self._v = self._k.index_select(0, index), self._v.index_select(0, index)


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

    def between(self, query_pos: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
        """Bias of queries at ``query_pos`` (B, T_q) over keys at ``key_pos`` (B, T_k): (B, H, T_q, T_k)."""
        rel = key_pos[:, None, :] - query_pos[:, :, None]  # (B, T_q, T_k) key minus query
        return self.table(self._bucket(rel)).permute(0, 3, 1, 2)


def build_attention_mask(
    padding: torch.Tensor | None,  # (B, T) bool, True = padding
    causal_start: torch.Tensor | None,  # (B,) int64: response tokens start at this sequence index
    length: int,
    device: torch.device,
    causal_stop: int | None = None,  # the response ends here (the text segment's end); None: at ``length``
) -> torch.Tensor | None:  # bool (B, 1, T|1, T), True = attend; None = attend everywhere
    """Padding and prefix-LM mask for SDPA.

    The prefix-LM mask is bidirectional over the prefix (media and prompt) and causal over the response
    (sequence indices ``[causal_start, causal_stop)``): a response key j is seen only by response queries
    i >= j, so no prefix token (audio after the text included) depends on the response, and a response
    token sees every prefix token and the response up to itself.
    """
    mask = None
    if padding is not None and bool(padding.any()):
        mask = (~padding)[:, None, None, :]  # (B, 1, 1, T)
    if causal_start is not None:
        idx = torch.arange(length, device=device)
        stop = length if causal_stop is None else causal_stop
        response = (idx[None, :] >= causal_start[:, None]) & (idx[None, :] < stop)  # (B, T)
        allowed = ~response[:, None, :] | (response[:, :, None] & (idx[None, None, :] <= idx[None, :, None]))
        allowed = allowed[:, None]  # (B, 1, T, T)
        mask = allowed if mask is None else (mask & allowed)
    return mask
