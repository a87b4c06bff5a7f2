"""Task heads, separate from the backbone so objectives pick the ones they need.

Each head maps backbone features to what an objective scores; none computes a loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MLMHead(nn.Module):
    """Masked language modelling, with the output matrix tied to the text token embedding.

    The tied weight is passed to ``forward`` (``model.text_embedding.weight``) rather than stored, so the
    parameter has a single owner: state dicts, safetensors and ZeRO partitioning see it once.

    Args:
        dim: model width.
        vocab_size: text vocabulary (the embedding's rows).
        eps: LayerNorm epsilon.
    """

    def __init__(self, dim: int, vocab_size: int, eps: float = 1e-5):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: torch.Tensor, embedding_weight: torch.Tensor) -> torch.Tensor:  # (..., C) -> (..., V)
        x = self.norm(F.gelu(self.dense(x)))
        return F.linear(x, embedding_weight, self.bias)


class MIMHead(nn.Module):
    """Masked image modelling: classify each masked patch into a visual-tokenizer code.

    Args:
        dim: model width.
        codebook_size: number of visual codes (BEiT v2 VQ-KD: 8,192).
    """

    def __init__(self, dim: int, codebook_size: int = 8192):
        super().__init__()
        self.proj = nn.Linear(dim, codebook_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., C) -> (..., K)
        return self.proj(x)


class AudioRegressionHead(nn.Module):
    """Masked audio modelling: regress the log-mel values of each masked patch.

    Args:
        dim: model width.
        n_mels: mel bins per frame.
        patch_frames: frames per audio token; the output has ``n_mels * patch_frames`` values.
    """

    def __init__(self, dim: int, n_mels: int = 128, patch_frames: int = 4):
        super().__init__()
        self.n_mels, self.patch_frames = n_mels, patch_frames
        self.proj = nn.Linear(dim, n_mels * patch_frames)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., C) -> (..., frames * mels)
        return self.proj(x)


class ContrastiveHead(nn.Module):
    """Per-modality projections of pooled CLS features to a shared, L2-normalised space, and a
    learnable temperature (stored as log of the logit scale, init log(1/0.07), clamped at ``max_scale``).

    Args:
        dim: model width.
        embed_dim: width of the shared space.
        modalities: modalities that get a projection.
        init_temperature: initial temperature (CLIP / BEiT-3 / ONE-PEACE: 0.07).
        max_scale: largest allowed logit scale (CLIP: 100), so training cannot blow it up.
    """

    def __init__(
        self,
        dim: int,
        embed_dim: int,
        modalities: tuple[str, ...] = ("vision", "text"),
        init_temperature: float = 0.07,
        max_scale: float = 100.0,
    ):
        super().__init__()
        self.proj = nn.ModuleDict({m: nn.Linear(dim, embed_dim, bias=False) for m in modalities})
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_log_scale = math.log(max_scale)

    def logit_scale(self) -> torch.Tensor:
        """exp of the clamped log scale; gradient stops flowing once the clamp is hit."""
        return self.log_scale.clamp(max=self.max_log_scale).exp()

    def forward(self, pooled: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """modality -> (B, C) pooled features  =>  modality -> (B, E) unit vectors (for those with a proj)."""
        return {m: F.normalize(self.proj[m](x), dim=-1) for m, x in pooled.items() if m in self.proj}


class ITMHead(nn.Module):
    """Image-text matching: does the pair match? Pooler (dense + tanh) then a 2-way classifier (or
    ``classes``-way: OPT's five match states of an image-text-audio triplet).

    Args:
        dim: model width.
        classes: classifier outputs (2: no match / match).
    """

    def __init__(self, dim: int, classes: int = 2):
        super().__init__()
        self.pooler = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, classes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:  # (B, C) -> (B, classes)
        return self.classifier(torch.tanh(self.pooler(pooled)))


class LMHead(nn.Module):
    """Next-token prediction for generation (prefix-LM) over the text vocabulary.

    Args:
        dim: model width.
        vocab_size: text vocabulary.
        eps: LayerNorm epsilon.
    """

    def __init__(self, dim: int, vocab_size: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.proj = nn.Linear(dim, vocab_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (B, L, V)
        return self.proj(self.norm(x))
