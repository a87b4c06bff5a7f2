"""``MultiwayModel``: adapters -> explicit layout -> multiway encoder -> per-modality features."""

from __future__ import annotations

from typing import Mapping, NamedTuple

import torch
from torch import nn

from .attention import RelativePositionBias, build_attention_mask
from .config import ModelConfig
from .layout import Layout
from .modalities import build_adapter
from .multiway import MultiwayBlock
from .encoder import MultiwayEncoder


class ModelOutput(NamedTuple):
    """What ``MultiwayModel.forward`` returns (a NamedTuple so that DeepSpeed ZeRO-3's hooks see the
    tensors inside it, see ``AdapterOutput``).

    Attributes:
        hidden: (B, T, C) final features of the whole sequence.
        layout: the layout the sequence was routed with.
        tokens: modality -> (B, N_m, C) features of that modality's segment.
        pooled: modality -> (B, C) features of the segment's first token (CLS; BOS for text).
        padding: modality -> (B, N_m) bool padding mask, or None when the segment has no padding.
    """

    hidden: torch.Tensor
    layout: Layout
    tokens: dict[str, torch.Tensor]
    pooled: dict[str, torch.Tensor]
    padding: dict[str, torch.Tensor | None]


class MultiwayModel(nn.Module):
    """The multiway transformer backbone (no heads).

    Args:
        config: a ``ModelConfig``; ``config.modalities`` picks the registered adapters, in sequence order.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.adapters = nn.ModuleDict({m: build_adapter(m, config) for m in config.modalities})
        self.encoder = MultiwayEncoder(config)
        self.reset_parameters()

    # --- init ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """BEiT-3 init: truncated normal(0.02) for linear/conv/embedding weights and learned tokens, zero
        biases, unit LayerNorms, then Magneto's sqrt(log 2N) scaling when sub-LN is on."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.trunc_normal_(module.weight, std=0.02)
        for adapter in self.adapters.values():
            for name, p in adapter.named_parameters(recurse=False):
                nn.init.trunc_normal_(p, std=0.02)
        for module in self.modules():
            if isinstance(module, RelativePositionBias):
                nn.init.zeros_(module.table.weight)
            elif isinstance(module, MultiwayBlock) and self.config.layer_scale > 0:
                for p in (module.attn_scale, module.ffn_scale):
                    p.fill_(self.config.layer_scale)
        if self.config.subln:
            for block in self.encoder.blocks:
                block.scale_init(self.config.subln_init_scale)

    # --- forward ------------------------------------------------------------------------------------

    def embed(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, Layout, torch.Tensor | None]:
        """Run the adapters of the modalities present; returns the sequence (B, T, C), its layout and the
        (B, T) padding mask (None when nothing is padding)."""
        parts, lengths, pads = [], [], []
        for name, adapter in self.adapters.items():
            if not adapter.present(inputs):
                continue
            out = adapter(inputs)
            parts.append(out.tokens)
            lengths.append((name, out.tokens.shape[1]))
            pads.append(out.padding)
        if not parts:
            keys = {n: a.input_keys[0] for n, a in self.adapters.items()}
            raise ValueError(f"no modality input found; expected one of {keys}, got {sorted(inputs)}")
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (B, T, C)
        padding = None
        if any(p is not None for p in pads):
            B = x.shape[0]
            padding = torch.cat(
                [p.bool() if p is not None else torch.zeros(B, t.shape[1], dtype=torch.bool, device=x.device)
                 for p, t in zip(pads, parts)],
                dim=1,
            )  # (B, T)
            # padded tokens enter as zeros (torchscale does the same; keeps them finite and inert)
            x = x * (~padding).unsqueeze(-1).to(x.dtype)
        return x, Layout.contiguous(lengths), padding

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> ModelOutput:
        """Encode whichever modalities ``inputs`` holds (see ``model.modalities`` for the keys).

        ``inputs["text_causal_start"]`` (B,) int64, optional: text tokens at or after this index are the
        response and attend causally (prefix-LM for generation); media and prompt are bidirectional and
        never see the response (see ``build_attention_mask``).
        """
        x, layout, padding = self.embed(inputs)
        causal, stop = inputs.get("text_causal_start"), None
        if causal is not None:
            text = layout.segment("text")
            causal, stop = causal.to(x.device).long() + text.start, text.stop  # text -> sequence indices
        mask = build_attention_mask(padding, causal, x.shape[1], x.device, stop)
        hidden = self.encoder(x, layout, mask)  # (B, T, C)
        out = ModelOutput(hidden=hidden, layout=layout, tokens={}, pooled={}, padding={})
        for seg in layout:
            out.tokens[seg.modality] = hidden[:, seg.start : seg.stop]  # (B, N_m, C)
            out.pooled[seg.modality] = hidden[:, seg.start]  # (B, C)
            out.padding[seg.modality] = None if padding is None else padding[:, seg.start : seg.stop]
        return out

    @property
    def text_embedding(self) -> nn.Embedding:
        """The token embedding the MLM head ties to."""
        return self.adapters["text"].embed


__all__ = ["ModelOutput", "MultiwayModel"]
