"""l2-normalised EMA vector quantizer (BEiT v2 `norm_ema_quantizer.py`), plus dead-code restarts.

Codes and inputs live on the unit sphere, so the nearest code by Euclidean distance is the one of highest
cosine similarity. The codebook is not learned by gradients: each training step moves every code that
was hit towards the (normalised) mean of the inputs it won, with decay ``decay`` (EMA), and re-normalises
it. Gradients reach the encoder through the straight-through estimator. A code whose EMA hit count falls
below ``dead_threshold`` times the average is restarted on a random input of the current batch (BEiT v2 used k-means
initialisation instead; restarts keep a small codebook in use without it).

Under ``torch.distributed`` (Ray Train + DeepSpeed) the hit counts and sums are all-reduced and restart
samples come from rank 0, so every rank keeps the same codebook without any help from the training loop.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(t)
    return t


def _broadcast(t: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.broadcast(t, src=0)
    return t


def _fp32(t: torch.Tensor):
    """Context: autocast off on ``t``'s device (float32 matmuls stay float32)."""
    return torch.autocast(t.device.type, enabled=False)


class NormEMAVectorQuantizer(nn.Module):
    """Cosine-lookup codebook with EMA updates, restarts and straight-through gradients.

    Args:
        codebook_size: number of codes K.
        code_dim: code dimension D (32 in BEiT v2).
        beta: weight of the commitment loss ``||sg[q] - z||^2``.
        decay: EMA decay of the codes and of their hit counts.
        dead_threshold: a code whose EMA hit rate is below this fraction of the average code's is dead
            (relative, so one setting fits any batch size and codebook size).
        restart_every: restart dead codes every this many training steps (0 = never).
    """

    def __init__(self, codebook_size: int, code_dim: int, beta: float = 1.0, decay: float = 0.99,
                 dead_threshold: float = 0.1, restart_every: int = 20):
        super().__init__()
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.beta, self.decay = beta, decay
        self.dead_threshold, self.restart_every = dead_threshold, restart_every
        # Buffers, not parameters: the optimizer (and ZeRO partitioning) must never touch the codebook.
        self.register_buffer("codebook", F.normalize(torch.randn(codebook_size, code_dim), dim=-1))  # (K, D)
        self.register_buffer("cluster_size", torch.zeros(codebook_size))  # (K,) EMA hits per step
        # 0 until the codebook has been seeded from real encoder outputs (first training batch)
        self.register_buffer("initialized", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    # --- lookup -------------------------------------------------------------------------------------

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code ids of ``z`` (..., D) (need not be normalised) -> (...) int64."""
        # argmax of cosine == argmin of distance on the sphere; float32 so bf16 training cannot flip ids
        # (autocast off too: under it a float32 matmul still runs in bf16, and ~1.5% of ids flipped)
        with _fp32(z):
            flat = F.normalize(z.reshape(-1, self.code_dim).float(), dim=-1)  # (M, D)
            sim = flat @ self.codebook.float().t()  # (M, K)
        return sim.argmax(dim=-1).reshape(z.shape[:-1])

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Code vectors of ``ids`` (...) -> (..., D)."""
        return F.embedding(ids, self.codebook)

    # --- training -----------------------------------------------------------------------------------

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantize ``z`` (B, N, D).

        Returns:
            z_q: (B, N, D) quantized vectors carrying straight-through gradients to ``z``.
            loss: scalar commitment loss.
            ids: (B, N) int64 code ids.
        """
        z = F.normalize(z, dim=-1)  # (B, N, D)
        flat = z.reshape(-1, self.code_dim)  # (M, D)
        if self.training and not bool(self.initialized):
            self._seed(flat.detach())
        ids = self.lookup(flat).reshape(z.shape[:-1])  # (B, N)
        q = self.embed(ids).to(z.dtype)  # (B, N, D)
        if self.training:
            self._ema_update(flat.detach(), ids.reshape(-1))
        loss = self.beta * F.mse_loss(q.detach(), z)
        q = z + (q - z).detach()  # straight-through: forward q, backward identity into z
        return q, loss, ids

    @torch.no_grad()
    def _seed(self, flat: torch.Tensor) -> None:
        # codes start on real encoder outputs, so none begins far from the data (cheap k-means init)
        self.codebook.copy_(_broadcast(self._sample(flat, self.codebook_size)))
        self.initialized.fill_(1)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, ids: torch.Tensor) -> None:
        with _fp32(flat):  # the codebook statistics (and restarts) in float32 under autocast too
            self._ema_update_fp32(flat.float(), ids)

    def _ema_update_fp32(self, flat: torch.Tensor, ids: torch.Tensor) -> None:
        onehot = F.one_hot(ids, self.codebook_size).float()  # (M, K)
        hits = _all_reduce(onehot.sum(0))  # (K,)
        sums = _all_reduce(onehot.t() @ flat)  # (K, D)
        self.cluster_size.mul_(self.decay).add_(hits, alpha=1 - self.decay)
        hit = hits > 0
        means = F.normalize(sums / hits.clamp(min=1).unsqueeze(1), dim=-1)  # (K, D)
        moved = F.normalize(self.codebook * self.decay + means * (1 - self.decay), dim=-1)
        # codes nobody picked this step keep their value (BEiT v2's torch.where on zero_mask)
        self.codebook.copy_(torch.where(hit.unsqueeze(1), moved, self.codebook))
        self.steps += 1
        if self.restart_every and int(self.steps) % self.restart_every == 0:
            self._restart(flat)

    @torch.no_grad()
    def _restart(self, flat: torch.Tensor) -> None:
        mean = self.cluster_size.mean()
        dead = self.cluster_size < self.dead_threshold * mean  # (K,)
        n = int(dead.sum())
        if n == 0:
            return
        # k-means++ style: prefer inputs the codebook serves worst, so restarted codes do not all land
        # in the biggest cluster (e.g. the flat background patches of every image)
        err = 1 - (F.normalize(flat, dim=-1) @ self.codebook.t()).max(dim=-1).values  # (M,)
        fresh = _broadcast(self._sample(flat, n, weights=err.clamp(min=0) + 1e-6))  # (n, D)
        self.codebook[dead] = fresh
        # a restarted code gets a fair chance before it can be declared dead again
        self.cluster_size[dead] = mean

    @staticmethod
    def _sample(flat: torch.Tensor, n: int, weights: torch.Tensor | None = None) -> torch.Tensor:
        """n rows of ``flat`` (uniform, or in proportion to ``weights``; with replacement only when there
        are fewer rows than n), normalised, plus a little noise so codes seeded on one input split apart."""
        M = flat.shape[0]
        if weights is None:
            weights = torch.ones(M, device=flat.device)
        idx = torch.multinomial(weights.float(), n, replacement=M < n)
        picked = flat[idx].float()
        return F.normalize(picked + 1e-3 * torch.randn_like(picked), dim=-1)

    # --- diagnostics --------------------------------------------------------------------------------

    @staticmethod
    def usage(ids: torch.Tensor, codebook_size: int) -> tuple[float, float]:
        """(share of codes used, perplexity) of a batch of ids."""
        counts = torch.bincount(ids.reshape(-1), minlength=codebook_size).float()
        p = counts / counts.sum().clamp(min=1)
        perplexity = torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum())
        return float((counts > 0).float().mean()), float(perplexity)


__all__ = ["NormEMAVectorQuantizer"]
