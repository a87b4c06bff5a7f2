"""`VQKDConfig`: the VQ-KD visual tokenizer's architecture -- the one definition of it.

Standard library only: the `visual-tokenizer` stage's `with.tokenizer` is this class, and the pipeline
planner loads it without torch (`model/__init__.py` imports its submodules lazily).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from .typed_config import from_dict


@dataclass
class VQKDConfig:
    """Tokenizer architecture and quantizer settings (8,192 codes of dim 32 for real runs).

    Args:
        image_resolution: square input side R in pixels; must equal the shards' image resolution.
        patch_size: patch side P; R / P must be the pretraining model's patch grid.
        dim / depth / heads / ffn_dim: encoder ViT width, blocks, heads, FFN width.
        decoder_depth: decoder ViT blocks (same width).
        codebook_size: number of codes K (ids must fit int16: K <= 32768).
        code_dim: code dimension D.
        beta: commitment loss weight.
        decay: EMA decay of the codebook.
        dead_threshold: a code hit at under this fraction of the average code's rate is restarted.
        restart_every: training steps between dead-code restarts (0 = never).
        target: "pixels" (regress the patch pixels; no teacher) or "teacher" (regress the features of
            the frozen module given to ``VQKD(target=...)``; the stage names it in its `teacher` key).
        target_dim: feature width of the teacher (ignored for pixels: 3 * P * P).
        norm_pix: pixel target only: normalise each target patch to zero mean, unit variance (MAE).
        loss: "mse" or "cosine" (BEiT v2's 1 - cos with a teacher); "auto" picks mse for pixels,
            cosine for a teacher.
    """

    image_resolution: int = 224
    patch_size: int = 16
    dim: int = 768
    depth: int = 12
    heads: int = 12
    ffn_dim: int = 3072
    decoder_depth: int = 3
    codebook_size: int = 8192
    code_dim: int = 32
    beta: float = 1.0
    decay: float = 0.99
    dead_threshold: float = 0.1
    restart_every: int = 20
    target: Literal["pixels", "teacher"] = "pixels"
    target_dim: int = 0
    norm_pix: bool = False
    loss: Literal["auto", "mse", "cosine"] = "auto"

    def __post_init__(self) -> None:
        # runs when the pipeline file is loaded too, so a bad architecture fails before any work
        if self.patch_size <= 0 or self.image_resolution % self.patch_size:
            raise ValueError(f"image_resolution {self.image_resolution} is not a multiple of "
                             f"patch_size {self.patch_size}")
        if not 2 <= self.codebook_size <= 32768:
            raise ValueError(f"codebook_size {self.codebook_size} must lie in [2, 32768] (ids are int16)")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.target == "teacher" and self.target_dim <= 0:
            raise ValueError("target 'teacher' needs target_dim (the teacher's feature width)")

    @property
    def grid(self) -> int:
        return self.image_resolution // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def out_dim(self) -> int:
        return self.target_dim if self.target == "teacher" else 3 * self.patch_size ** 2

    @property
    def loss_kind(self) -> str:
        return self.loss if self.loss != "auto" else ("cosine" if self.target == "teacher" else "mse")

    def backbone(self, layers: int, checkpoint_activations: bool = False):
        """A vision-only ``model.ModelConfig`` of this width (pre-LN ViT: no sub-LN, no experts to speak of)."""
        from .config import ModelConfig, VisionConfig

        return ModelConfig(dim=self.dim, layers=layers, heads=self.heads, ffn_dim=self.ffn_dim,
                           modalities=("vision",), subln=False, checkpoint_activations=checkpoint_activations,
                           vision=VisionConfig(img_size=self.image_resolution, patch_size=self.patch_size))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, path: str = "VQKDConfig") -> "VQKDConfig":
        """Strict (``model.typed_config``): an unknown or mistyped key is a ``ConfigError`` naming it."""
        return from_dict(cls, data, path)


__all__ = ["VQKDConfig"]
