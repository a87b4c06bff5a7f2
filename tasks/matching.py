"""Sample-level matching: does a fused sequence hold one sample's modalities or a mix of several?

- Pairs (image-text, audio-text, image-audio), ALBEF / VLMo / BEiT-3 practice: every pair is kept (a
  positive) and gets one hard negative each way, its second modality swapped for another sample's and its
  first swapped likewise, the partner drawn in proportion to softmax of the in-batch similarity (never the
  sample itself, never a candidate whose swapped-in content equals its own: the demo's digit captions
  repeat). 3B fused sequences -> ``ITMHead`` -> 2 classes (1 = match).
- Triplets (image-text-audio), OPT's sample level: one or two modalities are replaced by other samples'
  and the fused sequence is classified into the five match states of ``TRIPLET_STATES``, text as anchor.

The random draws (uniforms, states, partners) are made by the collator from the step's generator
(``draw_matching``), so a resumed run repeats them; the similarity they are applied to comes from the
forward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.heads import ITMHead

# what the five classes of a triplet mean (index = label), by which source each modality came from
TRIPLET_STATES = ("all_match", "image_swapped", "audio_swapped", "text_odd_one_out", "none_match")
IGNORE = -100  # label of a sequence whose state is ambiguous (duplicate contents): no loss


def draw_matching(batch: int, triplet: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The step's random numbers for one group: ``match_u`` (B, 2) uniforms for the two hard-negative
    draws of pairs; for triplets ``match_state`` (B,) in 0..4 and ``match_partner`` (B, 2) two distinct
    other rows (needs B >= 3; with fewer the triplets are left out of matching)."""
    out = {"match_u": torch.rand(batch, 2, generator=generator)}
    if triplet and batch >= 3:
        out["match_state"] = torch.randint(0, len(TRIPLET_STATES), (batch,), generator=generator)
        # partner j != i and k != i, j: rows i + 1 + r (mod B) with r drawn without the forbidden offsets
        first = torch.randint(0, batch - 1, (batch,), generator=generator)
        second = torch.randint(0, batch - 2, (batch,), generator=generator)
        second = second + (second >= first).long()  # skip the first partner's offset
        rows = torch.arange(batch)
        out["match_partner"] = torch.stack([(rows + 1 + first) % batch, (rows + 1 + second) % batch], dim=1)
    return out


def same_rows(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B, B) bool, True where two rows hold identical values (duplicate contents)."""
    flat = x.reshape(x.shape[0], -1)
    return (flat[:, None, :] == flat[None, :, :]).all(-1)


def hard_negatives(sim: torch.Tensor, allowed: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One partner per row, drawn with probability softmax(sim) over the allowed columns.

    Args:
        sim: (B, B) similarity of row i to candidate j (no gradient needed).
        allowed: (B, B) bool, False on the diagonal and on duplicate contents.
        u: (B,) uniforms in [0, 1) (inverse-CDF sampling: the draw is reproducible from them).
    Returns:
        (partner (B,) long, valid (B,) bool: False where a row had no allowed candidate).
    """
    w = torch.softmax(sim.float().masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num(0.0)  # (B, B)
    cdf = w.cumsum(-1)  # (B, B)
    valid = allowed.any(-1)
    # right side: the first column whose cumulative weight exceeds u * total, never a zero-weight one
    pick = torch.searchsorted(cdf, (u.to(cdf) * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    return pick.clamp(max=sim.shape[1] - 1), valid


def triplet_sources(state: torch.Tensor, partner: torch.Tensor) -> dict[str, torch.Tensor]:
    """Which row each modality of triplet i comes from, per ``TRIPLET_STATES``: text always from i."""
    rows = torch.arange(state.shape[0], device=state.device)
    j, k = partner[:, 0], partner[:, 1]
    image = torch.where((state == 1) | (state == 3) | (state == 4), j, rows)
    audio = torch.where(state == 2, j, torch.where(state == 3, j, torch.where(state == 4, k, rows)))
    return {"text": rows, "image": image, "audio": audio}


def triplet_labels(state: torch.Tensor, sources: dict[str, torch.Tensor], text_ids: torch.Tensor) -> torch.Tensor:
    """The state as label, ``IGNORE`` where two different source rows hold the same text (then the
    'swapped' modality may belong to the anchor text after all)."""
    same = same_rows(text_ids)  # (B, B)
    src = [sources["text"], sources["image"], sources["audio"]]
    ambiguous = torch.zeros_like(state, dtype=torch.bool)
    for a in range(3):
        for b in range(a + 1, 3):
            ambiguous |= (src[a] != src[b]) & same[src[a], src[b]]
    return state.masked_fill(ambiguous, IGNORE)


class MatchClassification(nn.Module):
    """A match classifier over fused sequences: ``ITMHead`` on the sequence's first token, cross-entropy.

    Args:
        dim: model width.
        classes: 2 (pairs: match / no match) or 5 (triplets, ``TRIPLET_STATES``).
    """

    def __init__(self, dim: int, classes: int = 2):
        super().__init__()
        self.head = ITMHead(dim, classes)

    def forward(self, pooled: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """pooled (N, C) first-token features of N fused sequences; labels (N,) long (``IGNORE`` = none)."""
        logits = self.head(pooled).float()  # (N, classes)
        keep = labels != IGNORE
        n = keep.sum()
        if int(n) == 0:
            loss = logits.sum() * 0.0  # stays attached: every rank runs the same backward
        else:
            loss = F.cross_entropy(logits, labels, ignore_index=IGNORE)
        acc = ((logits.argmax(-1) == labels) & keep).float().sum() / n.clamp(min=1)
        return {"loss": loss, "acc": acc.detach(), "count": n.float().detach()}


__all__ = ["IGNORE", "TRIPLET_STATES", "MatchClassification", "draw_matching", "hard_negatives", "same_rows",
           "triplet_labels", "triplet_sources"]
