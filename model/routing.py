"""Routing by an explicit ``Layout``: per-modality experts and the ``route`` helper.

Inside the encoder activations are sequence-first, ``(T, B, C)``, so that a modality segment
``x[start:stop]`` is one contiguous block of memory: routing splits the sequence into zero-copy views, runs
each through its modality's expert and concatenates the results, with no per-token gather/scatter and no
copy to make a strided slice dense before each matmul (torchscale routes batch-first ``(B, T, C)`` slices,
which every Linear and LayerNorm must first copy). Interleaved layouts use boolean token selection.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .layout import Layout
from .ops import Linear

# Linear classes whose forward is exactly ``x @ W^T + b`` outside autocast (``ops.Linear`` differs only under
# CPU bf16 autocast, which ``_writes_in_place`` excludes).
_PLAIN_LINEARS = (nn.Linear, Linear)

FUSION = "fusion"  # key of the fusion expert (BEiT-3 paper's VL-FFN)
SHARED = "shared"  # key of the one module all non-fusion tokens use when a part is not per modality


class Experts(nn.ModuleDict):
    """One copy of a module per routing key (a modality name, ``fusion`` or ``shared``).

    State-dict keys read ``<part>.<modality>.<param>``, e.g. ``ffn.vision.fc1.weight``.

    Args:
        make: builds one expert; called once per key, so copies are independent.
        keys: routing keys.
    """

    def __init__(self, make: Callable[[], nn.Module], keys: Sequence[str]):
        super().__init__({k: make() for k in keys})

    def forward(self, x: torch.Tensor, layout: Layout) -> torch.Tensor:  # (T, B, C) -> (T, B, C')
        # A multimodal sequence goes wholly through the fusion expert where this layer has one.
        if FUSION in self and layout.is_multimodal:
            return self[FUSION](x)
        if SHARED in self:
            return self[SHARED](x)
        if layout.is_interleaved:
            return self._route_tokens(x, layout)
        segments = layout.segments
        if len(segments) == 1:
            return self._expert(segments[0].modality)(x)
        parts = torch.split(x, [s.length for s in segments], dim=0)  # contiguous views, no copy
        experts = [self._expert(s.modality) for s in segments]
        if _writes_in_place(experts, x):
            return _linears_into_one(experts, parts, x)
        return torch.cat([e(p) for e, p in zip(experts, parts)], dim=0)

    def _route_tokens(self, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        ids = layout.token_modality.t()  # (T, B), sequence-first like x
        out = None
        for index, name in enumerate(layout.names):
            mask = ids == index
            if not bool(mask.any()):
                continue  # absent modality: its expert is not run and gets no gradient
            y = self._expert(name)(x[mask])  # (N_m, C')
            if out is None:
                out = y.new_zeros(*ids.shape, y.shape[-1])
            out = out.index_put((mask,), y)
        return out

    def _expert(self, name: str) -> nn.Module:
        if name not in self:
            raise KeyError(f"no expert for modality {name!r}; experts: {list(self.keys())}")
        return self[name]


def _writes_in_place(experts: list[nn.Module], x: torch.Tensor) -> bool:
    """Inference on plain weights (no autograd, no autocast): the experts are linear layers that can write
    their segments straight into one output (``_linears_into_one``). Not for a module with forward hooks:
    a hook may change what its forward reads (ZeRO-3 gathers each partitioned weight, held 1-D and empty
    between calls, in a pre-forward hook)."""
    return (not torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type)
            and all(type(e) in _PLAIN_LINEARS and e.weight.dim() == 2 and e.weight.dtype == x.dtype
                    and not (e._forward_pre_hooks or e._forward_hooks) for e in experts))


def _linears_into_one(experts: list[nn.Module], parts: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
    """Each segment's matmul writes its rows of the output, (T, B, C_out): the same products as calling the
    experts and concatenating, without the concatenation's copy of every output (a prefill's image and text
    segments: the whole activation once more per routed projection)."""
    T, B, _ = x.shape
    n_out = experts[0].weight.shape[0]
    out = x.new_empty(T, B, n_out)
    rows = out.view(T * B, n_out)
    start = 0
    for e, p in zip(experts, parts):
        n = p.shape[0] * B
        flat = p.reshape(n, p.shape[-1])  # (T_s * B, C): a view, segments are contiguous
        if e.bias is None:
            torch.mm(flat, e.weight.t(), out=rows[start:start + n])
        else:
            torch.addmm(e.bias, flat, e.weight.t(), out=rows[start:start + n])
        start += n
    return out


def route(module: nn.Module, x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Call ``module`` on ``x``: routed when it holds experts, directly when it is shared."""
    if isinstance(module, Experts):
        return module(x, layout)
    return module(x)


def maybe_experts(make: Callable[[], nn.Module], keys: Sequence[str], per_modality: bool) -> nn.Module:
    """Per-modality experts when the policy says so, else one shared module."""
    return Experts(make, keys) if per_modality else make()
