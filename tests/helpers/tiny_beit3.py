"""A tiny BEiT-3 for the parity tests (tests/model) and the export tests (tests/pipelines): its sizes, inputs
for it, and torchscale 0.3.0 importable beside the CPU torch wheel (its one timm import, ``drop_path``, is
served by a stand-in module, because timm itself pulls torchvision, which does not import beside that
wheel)."""

from __future__ import annotations

import contextlib
import sys
import types

DIM, LAYERS, HEADS, FFN, VOCAB, IMG, PATCH, MAXPOS = 32, 2, 4, 64, 100, 32, 8, 40
_TIMM = ("timm", "timm.models", "timm.models.layers")


def tiny_inputs():
    """(pixels (3, 3, IMG, IMG), text ids (3, 12), padding (3, 12) bool: rows 1 and 2 padded)."""
    import torch

    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(3, 3, IMG, IMG, generator=g)
    ids = torch.randint(0, VOCAB, (3, 12), generator=g)
    pad = torch.zeros(3, 12, dtype=torch.bool)
    pad[1, 9:] = True
    pad[2, 4:] = True
    return pixels, ids, pad


def _drop_path(x, drop_prob=0.0, training=False):
    # timm.models.layers.drop_path: identity at inference, per-sample stochastic depth in training
    if drop_prob == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - drop_prob)
    return x * keep / (1 - drop_prob)


@contextlib.contextmanager
def torchscale_beit3_classes():
    """Yields torchscale's (EncoderConfig, BEiT3) with the timm stand-in installed for the duration (a real
    timm, when one is importable, is left alone)."""
    saved = {k: sys.modules.get(k) for k in _TIMM}
    if saved["timm"] is None:
        timm, models, layers = (types.ModuleType(n) for n in _TIMM)
        layers.drop_path = _drop_path
        timm.models, models.layers = models, layers
        sys.modules.update(dict(zip(_TIMM, (timm, models, layers))))
    try:
        from torchscale.architecture.config import EncoderConfig
        from torchscale.model.BEiT3 import BEiT3

        yield EncoderConfig, BEiT3
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
