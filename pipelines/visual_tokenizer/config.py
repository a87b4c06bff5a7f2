"""Config dataclasses of the `visual-tokenizer` kind (torch-free: the planner imports them).

`TokenizerArch` mirrors `model.visual_tokenizer.VQKDConfig` field for field (a test keeps them equal);
it is repeated here because importing `model` pulls in torch, which the planner must not pay for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from pipelines.train.config import TrainConfig


@dataclass
class TokenizerArch:
    """Tokenizer architecture; see `model.visual_tokenizer.VQKDConfig` for each field.

    Args:
        image_resolution: must equal `image_resolution` of every `shards` stage this tokenizer feeds.
        patch_size: image_resolution / patch_size is the model's patch grid (one id per patch).
        dim / depth / heads / ffn_dim / decoder_depth: encoder and decoder ViT sizes.
        codebook_size / code_dim: K codes of dimension D (8192 / 32 for real runs).
        beta / decay / dead_threshold / restart_every: quantizer settings.
        target: "pixels" (offline default) or "teacher" (see `VisualTokenizerConfig.teacher`).
        target_dim: the teacher's feature width.
        norm_pix: normalise each pixel-target patch (MAE).
        loss: "auto" | "mse" | "cosine".
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
        # the same checks as VQKDConfig, here so they fail at load time, before any work
        if self.patch_size <= 0 or self.image_resolution % self.patch_size:
            raise ValueError(f"image_resolution {self.image_resolution} is not a multiple of "
                             f"patch_size {self.patch_size}")
        if not 2 <= self.codebook_size <= 32768:
            raise ValueError(f"codebook_size {self.codebook_size} must lie in [2, 32768] (ids are int16)")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.target == "teacher" and self.target_dim <= 0:
            raise ValueError("target 'teacher' needs target_dim (the teacher's feature width)")


@dataclass
class VisualTokenizerConfig:
    """Config of the `visual-tokenizer` kind.

    Args:
        tokenizer: architecture (its grid must match the shards and the pretraining model).
        train: the shared training loop's settings (steps, micro_batch_size = images per worker
            per step, lr, workers...).
        max_images: at most this many train images (0 = all), in corpus order.
        val_images: at most this many val images for usage / reconstruction metrics (0 = all).
        cache_decoded: decode and resize the images once and keep the pixels in Ray's object store
            (small corpora); false re-decodes every epoch (streaming, for corpora that do not fit).
        shuffle_seed: the train images are shuffled once with this seed (None: corpus order).
        teacher: "module:function" returning a frozen torch module (float pixels (B, 3, R, R) in
            [-1, 1] -> (B, N, target_dim)); required when tokenizer.target is "teacher".
        encode_batch_size: images per forward when tokenizing (shards, validation).
        plot_samples: images in the reconstruction artifact (0 = none).
    """

    tokenizer: TokenizerArch = field(default_factory=TokenizerArch)
    train: TrainConfig = field(default_factory=TrainConfig)
    max_images: int = 0
    val_images: int = 256
    cache_decoded: bool = True
    shuffle_seed: Optional[int] = 0
    teacher: Optional[str] = None
    encode_batch_size: int = 32
    plot_samples: int = 8

    def __post_init__(self) -> None:
        if self.tokenizer.target == "teacher" and not self.teacher:
            raise ValueError("tokenizer.target is 'teacher': set teacher to 'module:function'")
        if self.teacher and ":" not in self.teacher:
            raise ValueError(f"teacher {self.teacher!r}: expected 'module:function'")
