"""Loss building blocks shared by the objectives: cross-rank gathering with gradients, symmetric
contrastive (CLIP / BEiT-3 / ONE-PEACE) loss, token-wise InfoNCE."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) when none is initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` (B, E) from every rank into (world * B, E), keeping the gradient path to every
    rank's slice (``torch.distributed.nn.all_gather`` sums the gradients back in backward), so each rank
    trains its encoder against the negatives of all ranks, as BEiT-3 and ONE-PEACE do.

    Every rank must call it with the same B (the loop gives each rank the same group batch sizes).
    """
    rank, size = world()
    if size == 1:
        return x
    import torch.distributed.nn.functional as dist_nn

    return torch.cat(dist_nn.all_gather(x.contiguous()), dim=0)


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """Symmetric InfoNCE between unit vectors of matching rows, negatives from every rank.

    Args:
        a, b: (B, E) L2-normalised embeddings of the same B samples in two modalities.
        logit_scale: scalar, 1 / temperature.
    Returns:
        {"loss": mean of both directions, "acc": fraction of local rows whose best match is their pair}.
    """
    rank, _ = world()
    all_a, all_b = gather_with_grad(a), gather_with_grad(b)  # (W*B, E)
    B = a.shape[0]
    labels = torch.arange(B, device=a.device) + rank * B  # local rows' positions in the gathered set
    logits_ab = logit_scale * a @ all_b.t()  # (B, W*B)
    logits_ba = logit_scale * b @ all_a.t()  # (B, W*B)
    loss = 0.5 * (F.cross_entropy(logits_ab, labels) + F.cross_entropy(logits_ba, labels))
    acc = (logits_ab.argmax(-1) == labels).float().mean()
    return {"loss": loss, "acc": acc.detach()}


def token_infonce(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 0.4) -> torch.Tensor:
    """Token-wise InfoNCE: each student token must pick its own teacher token among all teacher tokens
    given (ONE-PEACE's intra-modal denoising contrast; its temperature is 0.4).

    Args:
        student: (K, C) features of the masked tokens from the masked input.
        teacher: (K, C) no-grad features of the same tokens from the unmasked input.
    Returns:
        scalar loss (0 when K == 0, still attached to the graph).
    """
    if student.shape[0] == 0:
        return student.sum() * 0.0
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    logits = s @ t.t() / temperature  # (K, K)
    return F.cross_entropy(logits, torch.arange(s.shape[0], device=s.device))
