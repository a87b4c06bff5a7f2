"""VQ-KD visual tokenizer (BEiT v2): image -> one discrete code per patch of the model's grid.

    encoder ViT (the model's vision adapter + multiway blocks, vision only) -> patch features (B, N, C)
    -> task layer (Linear, Tanh, Linear) -> (B, N, D) -> l2-normalised EMA codebook -> ids (B, N)
    -> code vectors -> decoder ViT -> task layer -> (B, N, T) regressed onto a target per patch

The target is pluggable (``target=`` in ``VQKD``): a frozen teacher module mapping float pixels
(B, 3, R, R) to patch features (B, N, T) (BEiT v2 distils CLIP; any torch module a user has), or, the
offline default, the image's own pixel patches. Only the encoder half is needed to tokenize.

Weights and config are saved as ``<dir>/visual_tokenizer.safetensors`` + ``<dir>/visual_tokenizer.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, VisionConfig
from .layout import Layout
from .network import MultiwayModel
from .vector_quantizer import NormEMAVectorQuantizer

WEIGHTS_FILE = "visual_tokenizer.safetensors"
CONFIG_FILE = "visual_tokenizer.json"
# uint8 pixels -> [-1, 1]; the same mapping at training and tokenizing time
PIXEL_MEAN, PIXEL_STD = 0.5, 0.5


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
            the frozen module given to ``VQKD(target=...)``).
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

    def backbone(self, layers: int) -> ModelConfig:
        """A vision-only ``ModelConfig`` of this width (pre-LN ViT: no sub-LN, no experts to speak of)."""
        return ModelConfig(dim=self.dim, layers=layers, heads=self.heads, ffn_dim=self.ffn_dim,
                           modalities=("vision",), subln=False,
                           vision=VisionConfig(img_size=self.image_resolution, patch_size=self.patch_size))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "VQKDConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise KeyError(f"VQKDConfig: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


def task_layer(dim: int, out: int) -> nn.Sequential:
    """BEiT v2's encode/decode task layer: Linear, Tanh, Linear."""
    return nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, out))


def to_float_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, R, R) -> float (B, 3, R, R) in [-1, 1]; float input passes through unchanged."""
    if pixels.dtype == torch.uint8:
        return (pixels.float() / 255.0 - PIXEL_MEAN) / PIXEL_STD
    return pixels


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, P*P*C), patches row-major like the vision adapter's tokens."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // patch, patch, W // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // patch) * (W // patch), patch * patch * C)


def unpatchify(x: torch.Tensor, patch: int, channels: int = 3) -> torch.Tensor:
    """(B, N, P*P*C) -> (B, C, H, W); the inverse of ``patchify`` for a square grid."""
    B, N, _ = x.shape
    g = int(N ** 0.5)
    x = x.reshape(B, g, g, patch, patch, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, channels, g * patch, g * patch)


class PixelTarget(nn.Module):
    """The offline target: the image's own patches (B, N, 3*P*P), optionally normalised per patch."""

    def __init__(self, patch: int, norm_pix: bool):
        super().__init__()
        self.patch, self.norm_pix = patch, norm_pix

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        t = patchify(pixels, self.patch)  # (B, N, 3*P*P)
        if self.norm_pix:
            t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()
        return t


class VQKD(nn.Module):
    """The tokenizer: encoder, quantizer, decoder.

    Args:
        config: a ``VQKDConfig``.
        target: a frozen module mapping float pixels (B, 3, R, R) in [-1, 1] to patch features
            (B, N, target_dim); required when ``config.target == "teacher"``, else the pixel target is used.
            It is kept out of the state dict (never saved with the tokenizer).
    """

    def __init__(self, config: VQKDConfig, target: nn.Module | None = None):
        super().__init__()
        self.config = config
        if config.target == "teacher" and target is None:
            raise ValueError("VQKDConfig.target is 'teacher': pass the teacher module as target=")
        self.encoder = MultiwayModel(config.backbone(config.depth))
        # no patch is ever masked here; a parameter without gradient would trip DDP-style reducers
        self.encoder.adapters["vision"].mask_token.requires_grad_(False)
        self.encode_task = task_layer(config.dim, config.code_dim)
        self.quantizer = NormEMAVectorQuantizer(config.codebook_size, config.code_dim, config.beta,
                                                config.decay, config.dead_threshold, config.restart_every)
        dec = config.backbone(config.decoder_depth)
        self.decode_embed = nn.Linear(config.code_dim, config.dim)
        self.decode_pos = nn.Parameter(torch.zeros(1, config.num_patches, config.dim))
        nn.init.trunc_normal_(self.decode_pos, std=0.02)
        self.decoder = MultiwayModel(dec).encoder  # blocks only: its input is codes, not pixels
        self.decode_task = task_layer(config.dim, config.out_dim)
        if target is None:
            target = PixelTarget(config.patch_size, config.norm_pix)
        else:
            target.requires_grad_(False).eval()
        # object.__setattr__: not a submodule, so the teacher stays out of state_dict and parameters()
        object.__setattr__(self, "target", target)

    # --- tokenizing ---------------------------------------------------------------------------------

    def encode_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, R, R) uint8 or float in [-1, 1] -> unnormalised code-space features (B, N, D)."""
        x = to_float_pixels(pixels)
        R = self.config.image_resolution
        if tuple(x.shape[-3:]) != (3, R, R):
            raise ValueError(f"visual tokenizer expects pixels (B, 3, {R}, {R}); got {tuple(x.shape)}")
        tokens = self.encoder({"pixels": x}).tokens["vision"][:, 1:]  # (B, N, C), CLS dropped
        return self.encode_task(tokens)  # (B, N, D)

    @torch.inference_mode()
    def tokenize(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, R, R) -> code ids (B, N) int64, N = grid * grid, row-major."""
        return self.quantizer.lookup(self.encode_features(pixels))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """code vectors (B, N, D) -> reconstruction of the target (B, N, T)."""
        x = self.decode_embed(codes) + self.decode_pos  # (B, N, C)
        layout = Layout.contiguous([("vision", x.shape[1])])
        return self.decode_task(self.decoder(x, layout))  # (B, N, T)

    # --- training -----------------------------------------------------------------------------------

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """One training pass -> scalars {"loss", "rec_loss", "quant_loss", "usage", "perplexity"}.

        ``loss`` carries gradients; the others are detached diagnostics of this batch (usage: share of
        codes hit; perplexity: exp of the entropy of the batch's code histogram).
        """
        x = to_float_pixels(pixels)
        z = self.encode_features(x)  # (B, N, D)
        q, quant_loss, ids = self.quantizer(z)  # (B, N, D), scalar, (B, N)
        rec = self.decode(q)  # (B, N, T)
        with torch.no_grad():
            target = self.target(x).to(rec.dtype)  # (B, N, T)
        rec_loss = self.reconstruction_loss(rec, target)
        usage, perplexity = self.quantizer.usage(ids, self.config.codebook_size)
        return {"loss": rec_loss + quant_loss, "rec_loss": rec_loss.detach(),
                "quant_loss": quant_loss.detach(), "usage": torch.tensor(usage),
                "perplexity": torch.tensor(perplexity)}

    def reconstruction_loss(self, rec: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.config.loss_kind == "cosine":
            return (1 - F.cosine_similarity(rec.float(), target.float(), dim=-1)).mean()
        return F.mse_loss(rec.float(), target.float())

    @torch.inference_mode()
    def reconstruct(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel target only: pixels -> reconstructed float pixels (B, 3, R, R) in [-1, 1] (for plots)."""
        ids = self.tokenize(pixels)
        rec = self.decode(self.quantizer.embed(ids))  # (B, N, 3*P*P)
        return unpatchify(rec, self.config.patch_size)

    # --- persistence --------------------------------------------------------------------------------

    def save(self, directory: str) -> None:
        """Write ``visual_tokenizer.safetensors`` (all weights and codebook) and ``visual_tokenizer.json``."""
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, os.path.join(directory, WEIGHTS_FILE), metadata={"format": "omniway.vqkd/1"})
        with open(os.path.join(directory, CONFIG_FILE), "w") as f:
            json.dump(self.config.to_dict(), f, indent=2, sort_keys=True)

    @classmethod
    def load(cls, directory: str, target: nn.Module | None = None) -> "VQKD":
        """Rebuild a saved tokenizer (eval mode); strict: every key must match."""
        from safetensors.torch import load_file

        with open(os.path.join(directory, CONFIG_FILE)) as f:
            config = VQKDConfig.from_dict(json.load(f))
        if config.target == "teacher" and target is None:
            target = nn.Identity()  # tokenizing never calls the teacher; it only builds the module
        model = cls(config, target=target)
        model.load_state_dict(load_file(os.path.join(directory, WEIGHTS_FILE)), strict=True)
        return model.eval()


__all__ = ["VQKD", "VQKDConfig", "PixelTarget", "patchify", "unpatchify", "to_float_pixels",
           "WEIGHTS_FILE", "CONFIG_FILE"]
