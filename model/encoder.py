"""The stack of multiway blocks with the per-modality final norm and activation checkpointing."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import RelativePositionBias
from .config import ModelConfig
from .layout import Layout
from .multiway import MultiwayBlock
from .routing import maybe_experts, route


class MultiwayEncoder(nn.Module):
    """Multiway blocks over an already-embedded sequence.

    Args:
        config: model config (depth, policy, relative position bias, checkpointing).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.checkpoint_activations = config.checkpoint_activations
        self.blocks = nn.ModuleList(MultiwayBlock(config, i) for i in range(config.layers))
        self.final_norm = maybe_experts(
            lambda: nn.LayerNorm(config.dim, eps=config.norm_eps), config.modalities, "final_norm" in config.per_modality
        )
        self.rel_pos = (
            RelativePositionBias(config.rel_pos_buckets, config.max_rel_pos, config.heads)
            if config.rel_pos_buckets > 0
            else None
        )

    def forward(
        self,
        x: torch.Tensor,  # (B, T, C)
        layout: Layout,
        attn_mask: torch.Tensor | None = None,  # bool (B, 1, T|1, T_k), True = attend
        cache: list | None = None,  # one attention.LayerCache per block: decode against what they hold
        position_bias: torch.Tensor | None = None,  # (B|1, H, T, T_k) relative position bias of a decode step
    ) -> torch.Tensor:  # (B, T, C), normalised
        """With ``cache``, ``x`` is the new tokens only and ``layout`` theirs (``Layout.within`` the whole
        sequence's modalities); ``attn_mask`` and ``position_bias`` span every key the caches hold."""
        x = x.transpose(0, 1).contiguous()  # (T, B, C): modality segments become contiguous blocks
        if self.rel_pos is not None:
            # SDPA takes one additive mask: fold the boolean mask into the bias
            bias = position_bias if position_bias is not None else self.rel_pos(x.shape[0], x.device)
            bias = bias.to(x.dtype)  # (1|B, H, T, T_k)
            if attn_mask is not None:
                bias = bias.masked_fill(~attn_mask, float("-inf"))
            attn_mask = bias
        for i, block in enumerate(self.blocks):
            if cache is not None:
                x = block(x, layout, attn_mask, cache[i])
            elif self.checkpoint_activations and torch.is_grad_enabled():
                x = checkpoint(block, x, layout, attn_mask, use_reentrant=False)
            else:
                x = block(x, layout, attn_mask)
        x = route(self.final_norm, x, layout)  # (T, B, C)
        return x.transpose(0, 1).contiguous()  # (B, T, C)
