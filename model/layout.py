"""The sequence layout: which tokens belong to which modality.

Routing state is passed explicitly to every multiway module with each call (never stored in modules), so a
module's behaviour is a function of its inputs alone. Two forms:

* contiguous: ordered segments ``[(modality, length), ...]``; experts run on slices, no gather/scatter.
* interleaved: a per-token modality index ``(B, T)``; experts run on boolean-selected tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass(frozen=True)
class Segment:
    """A run of consecutive tokens of one modality: positions ``[start, start + length)``."""

    modality: str
    start: int
    length: int

    @property
    def stop(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class Layout:
    """Sequence layout shared by every sample of a batch.

    Args:
        segments: contiguous modality segments in sequence order (empty for an interleaved layout).
        token_modality: ``(B, T)`` int64 index into ``names`` per token, for interleaved sequences.
        names: modality names ``token_modality`` indexes.
        context: the modalities of the whole sequence when this layout covers only some of its tokens (a
            decode step's new tokens): routing decisions that depend on the whole sequence (the fusion
            experts serve every token of a multimodal sequence) follow it. Empty: this layout is the whole.
    """

    segments: tuple[Segment, ...] = ()
    token_modality: torch.Tensor | None = None
    names: tuple[str, ...] = ()
    context: tuple[str, ...] = ()

    @classmethod
    def contiguous(cls, lengths: list[tuple[str, int]] | tuple[tuple[str, int], ...]) -> "Layout":
        """Build from ``[(modality, length), ...]`` in sequence order."""
        segs, start = [], 0
        for modality, length in lengths:
            if length <= 0:
                raise ValueError(f"segment {modality!r} has length {length}")
            segs.append(Segment(modality, start, int(length)))
            start += int(length)
        if len({s.modality for s in segs}) != len(segs):
            raise ValueError(f"a modality appears in two segments: {[s.modality for s in segs]}; "
                             "use Layout.interleaved for that")
        return cls(segments=tuple(segs))

    @classmethod
    def interleaved(cls, token_modality: torch.Tensor, names: tuple[str, ...] | list[str]) -> "Layout":
        """Build from a per-token modality index ``(B, T)`` into ``names``."""
        if token_modality.dim() != 2:
            raise ValueError(f"token_modality must be (B, T), got {tuple(token_modality.shape)}")
        return cls(token_modality=token_modality.long(), names=tuple(names))

    @property
    def is_interleaved(self) -> bool:
        return self.token_modality is not None

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities present, in order (for interleaved layouts: all ``names`` that occur)."""
        if self.is_interleaved:
            present = torch.unique(self.token_modality).tolist()
            return tuple(self.names[i] for i in sorted(present))
        return tuple(s.modality for s in self.segments)

    @property
    def is_multimodal(self) -> bool:
        """More than one modality in the whole sequence (``context`` when set)."""
        return len(set(self.context or self.modalities)) > 1

    def within(self, context: tuple[str, ...]) -> "Layout":
        """This layout as part of a sequence holding ``context`` (see the ``context`` field)."""
        return Layout(self.segments, self.token_modality, self.names, tuple(context))

    @property
    def length(self) -> int:
        if self.is_interleaved:
            return self.token_modality.shape[1]
        return self.segments[-1].stop if self.segments else 0

    def segment(self, modality: str) -> Segment:
        for s in self.segments:
            if s.modality == modality:
                return s
        raise KeyError(f"modality {modality!r} not in layout {self.modalities}")

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)
