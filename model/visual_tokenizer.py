"""VQ-KD visual tokenizer (BEiT v2): image -> one discrete code per patch of the model's grid.

    encoder ViT (the model's vision adapter + multiway blocks, vision only) -> patch features (B, N, C)
    -> task layer (Linear, Tanh, Linear) -> (B, N, D) -> l2-normalised EMA codebook -> ids (B, N)
    -> code vectors -> decoder ViT -> task layer -> (B, N, T) regressed onto a target per patch

The target is pluggable (``target=`` in ``VQKD``): a frozen teacher module mapping float pixels
(B, 3, R, R) to patch features (B, N, T) (BEiT v2 distils CLIP; any torch module a user has), or, the
offline default, the image's own pixel patches. Only the encoder half is needed to tokenize.

Weights and config are saved as ``<dir>/visual_tokenizer.safetensors`` + ``<dir>/visual_tokenizer.json``.
The architecture config, ``VQKDConfig``, lives in ``model/vqkd_config.py`` (standard library only) and is
re-exported here; the ``visual-tokenizer`` stage uses that same class for its ``with.tokenizer`` key.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F
from torch import nn

from .layout import Layout
from .network import MultiwayModel
from .pixels import normalize_patches, patchify, to_float_pixels, unpatchify
from .vector_quantizer import NormEMAVectorQuantizer
from .vqkd_config import VQKDConfig  # torch-free, so the pipeline planner can load it alone

WEIGHTS_FILE = "visual_tokenizer.safetensors"
CONFIG_FILE = "visual_tokenizer.json"
def task_layer(dim: int, out: int) -> nn.Sequential:
    """BEiT v2's encode/decode task layer: Linear, Tanh, Linear."""
    return nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, out))


class PixelTarget(nn.Module):
    """The offline target: the image's own patches (B, N, 3*P*P), optionally normalised per patch."""

    def __init__(self, patch: int, norm_pix: bool):
        super().__init__()
        self.patch, self.norm_pix = patch, norm_pix

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        t = patchify(pixels, self.patch)  # (B, N, 3*P*P)
        if self.norm_pix:
            t = normalize_patches(t)
        return t


class VQKD(nn.Module):
    """The tokenizer: encoder, quantizer, decoder.

    Args:
        config: a ``VQKDConfig``.
        target: a frozen module mapping float pixels (B, 3, R, R) in [-1, 1] to patch features
            (B, N, target_dim); required when ``config.target == "teacher"``, else the pixel target is used.
            It is kept out of the state dict (never saved with the tokenizer).
        checkpoint_activations: recompute the encoder's and decoder's blocks in backward (memory for time).
    """

    def __init__(self, config: VQKDConfig, target: nn.Module | None = None, checkpoint_activations: bool = False):
        super().__init__()
        self.config = config
        if config.target == "teacher" and target is None:
            raise ValueError("VQKDConfig.target is 'teacher': pass the teacher module as target=")
        self.encoder = MultiwayModel(config.backbone(config.depth, checkpoint_activations))
        # no patch is ever masked here; a parameter without gradient would trip DDP-style reducers
        self.encoder.adapters["vision"].mask_token.requires_grad_(False)
        self.encode_task = task_layer(config.dim, config.code_dim)
        self.quantizer = NormEMAVectorQuantizer(config.codebook_size, config.code_dim, config.beta,
                                                config.decay, config.dead_threshold, config.restart_every)
        dec = config.backbone(config.decoder_depth, checkpoint_activations)
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


__all__ = ["VQKD", "VQKDConfig", "PixelTarget", "WEIGHTS_FILE", "CONFIG_FILE"]
