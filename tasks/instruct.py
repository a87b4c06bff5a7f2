"""Instruction tuning: the pretrained backbone and an LM head, next-token loss on the answer tokens only.

Each sample is one formatted conversation (``tasks.chat``) with its media: the prefix-LM mask makes media
and the first prompt bidirectional and everything from the first answer on causal (a later prompt sees
the earlier answers), ``text_causal_start`` = the first answer token. The features of token i predict
token i + 1 wherever the loss mask marks i + 1 as an answer token (or an answer's eos).

The LM head is ``MaskedLanguageModeling``'s head (dense, LayerNorm, output matrix tied to the text
embedding), initialised from the pretrained MLM head when the pretraining trained one: that head already
maps the backbone's features onto the vocabulary through the embedding matrix, so instruction tuning starts
from a head that knows the vocabulary instead of a random projection, and tying keeps one matrix for the
input and the output (BEiT-3's MLM head and UniLM-style prefix-LMs do the same).
"""

from __future__ import annotations

import torch
from torch import nn

from model import ModelConfig

from .objectives import MaskedLanguageModeling
from .recipes import GROUPS

_INPUT_KEYS = {"text": ("text_ids", "text_padding_mask"), "image": ("pixels",), "audio": ("fbank", "fbank_frames")}
# what trains, by name: `all`; `language` (mPLUG-Owl2 freezes its vision encoder: here the vision and audio
# adapters and every vision / audio expert stay as pretrained, except the visual abstractor, which mPLUG-Owl2
# trains with the language model); `text` (only text experts and the head)
TRAINABLE = ("all", "language", "text")


def trains(name: str, trainable: str) -> bool:
    """Whether parameter ``name`` (of an ``InstructModel``) trains under the ``trainable`` setting."""
    parts = name.split(".")
    if trainable == "all":
        return True
    if trainable == "language":
        if name.startswith("backbone.adapters.vision.abstractor."):
            return True
        return not (name.startswith(("backbone.adapters.vision.", "backbone.adapters.audio."))
                    or "vision" in parts[2:] or "audio" in parts[2:])
    if trainable == "text":
        return name.startswith(("lm.", "backbone.adapters.text.")) or "text" in parts[2:]
    raise ValueError(f"trainable {trainable!r}: expected one of {TRAINABLE}")


class InstructModel(nn.Module):
    """Backbone + LM head.

    Args:
        config: the backbone's ``ModelConfig`` (the pretrained one).
        trainable: what trains (``TRAINABLE``); the rest keeps ``requires_grad=False``.
    """

    def __init__(self, config: ModelConfig, trainable: str = "all"):
        super().__init__()
        self.backbone = config.build()
        self.lm = MaskedLanguageModeling(config.dim, config.text.vocab_size, embedding=self.backbone.text_embedding)
        self.trainable = trainable
        for name, p in self.named_parameters():
            p.requires_grad_(trains(name, trainable))

    def external_parameters(self) -> list[tuple[nn.Module, nn.Parameter]]:
        """ZeRO-3: the head's output matrix is the text embedding (see ``PretrainModel.external_parameters``)."""
        return [(self.lm.head, self.backbone.text_embedding.weight)]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., C) final features -> (..., V) next-token logits (the generation head)."""
        return self.lm.head(hidden, self.backbone.text_embedding.weight)

    def group_loss(self, group: str, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One group's batch -> {"loss" (mean over its answer tokens), "acc", "count"}."""
        inputs = {k: b[k] for m in GROUPS[group] for k in _INPUT_KEYS[m] if k in b}
        inputs["text_causal_start"] = b["causal_start"]
        text = self.backbone(inputs).tokens["text"]  # (B, L, C)
        # token i + 1 predicted from the features of token i, where i + 1 is an answer token
        return self.lm.next_token(text, b["text_ids"], b["loss_mask"] & ~b["text_padding_mask"])

    def forward(self, batch: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """{group: batch} -> {"loss": mean over every answer token of the step, "lm/<group>", "lm_tokens"}."""
        total, count, out = None, None, {}
        for group, b in batch.items():
            r = self.group_loss(group, b)
            weighted = r["loss"] * r["count"].to(r["loss"].device)
            total = weighted if total is None else total + weighted
            count = r["count"] if count is None else count + r["count"]
            out[f"lm/{group}"] = r["loss"].detach()
        out["loss"] = total / count.clamp(min=1).to(total.device)
        out["lm_tokens"] = count
        return out
