"""Pretraining objectives, each an ``nn.Module`` that owns its head and returns named losses.

Every objective computes its loss from backbone features it is given; none runs the backbone, so one
forward pass can feed several objectives (masked modeling and denoising share the masked pass). Each
returns ``{"loss": scalar, <part>: scalar...}``; parts are detached diagnostics (accuracy, sub-losses).

Objectives always call their head, even when no token of the batch is masked, so under ZeRO-3 every rank
runs the same modules in the same order (a skipped head on one rank would hang the parameter gathers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model import AudioRegressionHead, ContrastiveHead, MIMHead, MLMHead
from model.pixels import normalize_patches, patchify

from .losses import contrastive_loss, token_infonce


def _masked_mean(values: torch.Tensor, count: int) -> torch.Tensor:
    # sum / max(count, 1): finite (0) when nothing is masked, instead of the NaN of an empty mean
    return values.sum() / max(count, 1)


class MaskedLanguageModeling(nn.Module):
    """Predict the original ids of masked text tokens (head tied to the text embedding); as the LM head
    of a prefix-LM (``next_token``), the next token's id from each text token's features.

    Args:
        dim: model width.
        vocab_size: text vocabulary.
        embedding: the text token embedding the head's output matrix is tied to. Referenced, not owned
            (the backbone owns it: one owner for state dicts, the optimizer and ZeRO partitioning).
            Without it, ``forward`` takes the weight as an argument.
    """

    def __init__(self, dim: int, vocab_size: int, embedding: nn.Embedding | None = None):
        super().__init__()
        self.head = MLMHead(dim, vocab_size)
        # in a tuple so that nn.Module does not register it as a submodule of this one
        self._tied = (embedding,) if embedding is not None else ()

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                embedding_weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """tokens (B, L, C) text features of the masked input; targets (B, L) original ids;
        mask (B, L) bool, True = predicted; embedding_weight (V, C) only when no embedding was tied."""
        if embedding_weight is None:
            if not self._tied:
                raise ValueError("MaskedLanguageModeling needs the embedding weight: tie an embedding at "
                                 "construction or pass embedding_weight")
            # Read here, not by the caller: ZeRO-3 wraps every tensor argument of a module call in an
            # autograd function when the call starts, which aliases the storage the weight has then. The
            # head (the weight is registered as its external parameter) gathers it before that wrapping;
            # passed into this module while still partitioned, the head would get an empty alias.
            embedding_weight = self._tied[0].weight
        logits = self.head(tokens[mask], embedding_weight)  # (K, V)
        labels = targets[mask]  # (K,)
        k = labels.numel()
        loss = _masked_mean(F.cross_entropy(logits.float(), labels, reduction="none"), k)
        acc = _masked_mean((logits.argmax(-1) == labels).float(), k)
        return {"loss": loss, "acc": acc.detach(), "count": torch.tensor(float(k))}

    def next_token(self, tokens: torch.Tensor, ids: torch.Tensor, predicted: torch.Tensor) -> dict[str, torch.Tensor]:
        """Next-token loss of a prefix-LM (this head as the LM head): the features of text token i predict
        token i + 1 wherever ``predicted`` marks i + 1. tokens (B, L, C) text features of a pass under the
        prefix-LM mask (``text_causal_start``); ids (B, L) the input ids; predicted (B, L) bool."""
        return self(tokens[:, :-1], ids[:, 1:], predicted[:, 1:])


class MaskedImageModeling(nn.Module):
    """Predict masked patches: the visual-tokenizer code (BEiT-3, classification over the codebook) when
    ``target == "tokens"``, else the per-patch normalised pixels (MAE-style regression) when no visual
    tokenizer produced codes for the shards.

    Args:
        dim: model width.
        target: ``"tokens"`` or ``"pixels"``.
        codebook_size: visual codes (tokens target).
        patch: patch side in pixels (pixels target).
        in_chans: image channels (pixels target).
    """

    def __init__(self, dim: int, target: str = "tokens", codebook_size: int = 8192, patch: int = 16,
                 in_chans: int = 3):
        super().__init__()
        if target not in ("tokens", "pixels"):
            raise ValueError(f"MIM target must be 'tokens' or 'pixels', got {target!r}")
        self.target, self.patch = target, patch
        self.head = MIMHead(dim, codebook_size if target == "tokens" else patch * patch * in_chans)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, pixels: torch.Tensor | None = None,
                codes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """tokens (B, N, C) patch features (CLS excluded); mask (B, N) bool; pixels (B, 3, H, W) for the
        pixels target; codes (B, N) long for the tokens target."""
        pred = self.head(tokens[mask])  # (K, D)
        k = pred.shape[0]
        if self.target == "tokens":
            if codes is None:
                raise ValueError("MIM with target 'tokens' needs `image_tokens` in the batch: give the "
                                 "shards a visual tokenizer, or use mim_target 'pixels'")
            labels = codes[mask]  # (K,)
            loss = _masked_mean(F.cross_entropy(pred.float(), labels, reduction="none"), k)
            acc = _masked_mean((pred.argmax(-1) == labels).float(), k)
            return {"loss": loss, "acc": acc.detach(), "count": torch.tensor(float(k))}
        target = normalize_patches(patchify(pixels, self.patch))[mask]  # (K, D), per patch (MAE norm_pix)
        loss = _masked_mean(((pred.float() - target) ** 2).mean(-1), k)
        return {"loss": loss, "count": torch.tensor(float(k))}


class MaskedAudioModeling(nn.Module):
    """Regress the log-mel values of masked audio patches, plus a contrastive term (OPT): each prediction
    must be closer to its own frames than to the other masked frames of the batch.

    Args:
        dim: model width.
        n_mels: mel bins per frame.
        patch_frames: frames per audio token.
        contrast_weight: weight of the contrastive term inside this objective's loss.
        temperature: InfoNCE temperature of the contrastive term.
    """

    def __init__(self, dim: int, n_mels: int = 128, patch_frames: int = 4, contrast_weight: float = 0.1,
                 temperature: float = 0.1):
        super().__init__()
        self.patch_frames, self.contrast_weight, self.temperature = patch_frames, contrast_weight, temperature
        self.head = AudioRegressionHead(dim, n_mels, patch_frames)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, fbank: torch.Tensor) -> dict[str, torch.Tensor]:
        """tokens (B, N, C) audio patch features (CLS excluded); mask (B, N) bool; fbank (B, T, M) the
        clean (normalised) log-mel input, T <= N * patch_frames."""
        B, N, _ = tokens.shape
        M = fbank.shape[-1]
        target = F.pad(fbank, (0, 0, 0, N * self.patch_frames - fbank.shape[1]))
        target = target.reshape(B, N, self.patch_frames * M)[mask]  # (K, F*M)
        pred = self.head(tokens[mask]).float()  # (K, F*M)
        k = pred.shape[0]
        regression = _masked_mean(((pred - target) ** 2).mean(-1), k)
        contrast = token_infonce(pred, target, self.temperature)
        loss = regression + self.contrast_weight * contrast
        return {"loss": loss, "regression": regression.detach(), "contrast": contrast.detach(),
                "count": torch.tensor(float(k))}


class CrossModalContrast(nn.Module):
    """Align pooled features of paired modalities (image-text, audio-text, image-audio) with a symmetric
    InfoNCE over all ranks' samples and one learnable temperature.

    Args:
        dim: model width.
        embed_dim: shared embedding width.
        modalities: model modality names that get a projection.
    """

    def __init__(self, dim: int, embed_dim: int, modalities: tuple[str, ...] = ("vision", "text", "audio")):
        super().__init__()
        self.head = ContrastiveHead(dim, embed_dim, modalities)
        # DeepSpeed's engine broadcasts parameters as bytes (`p.data.view(torch.uint8)`), which fails for
        # 0-dim tensors: hold the log scale as shape (1,) (same value, same clamp in `logit_scale()`).
        self.head.log_scale = nn.Parameter(self.head.log_scale.detach().reshape(1))

    def embed(self, pooled: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """modality -> (B, C) CLS features  =>  modality -> (B, E) unit vectors."""
        return self.head(pooled)

    def forward(self, pooled: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """pooled: modality -> (B, C) from unimodal passes over the same B samples; every pair of the
        modalities given is contrasted; parts are named ``<a>_<b>`` (loss) and ``<a>_<b>_acc``."""
        emb = self.embed(pooled)
        names = [m for m in self.head.proj if m in emb]  # fixed order: same on every rank
        scale = self.head.logit_scale().reshape(())  # (1,) -> scalar
        out: dict[str, torch.Tensor] = {}
        losses = []
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                r = contrastive_loss(emb[a], emb[b], scale)
                out[f"{a}_{b}"], out[f"{a}_{b}_acc"] = r["loss"].detach(), r["acc"]
                losses.append(r["loss"])
        if not losses:
            raise ValueError(f"contrast needs two modalities, got {sorted(pooled)}")
        out["loss"] = torch.stack(losses).mean()
        out["temperature"] = (1.0 / scale).detach().reshape(())
        return out


class DenoisingContrast(nn.Module):
    """ONE-PEACE intra-modal denoising contrast: features of masked tokens from the masked input (student)
    against the same positions' features from the unmasked input under no-grad (teacher), token-wise
    InfoNCE over all masked tokens of the batch.

    Args:
        temperature: InfoNCE temperature (ONE-PEACE: 0.4).
    """

    def __init__(self, temperature: float = 0.4):
        super().__init__()
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """student, teacher (B, N, C); mask (B, N) bool. The teacher must already be detached."""
        loss = token_infonce(student[mask], teacher[mask].detach(), self.temperature)
        return {"loss": loss, "count": torch.tensor(float(mask.sum()))}
