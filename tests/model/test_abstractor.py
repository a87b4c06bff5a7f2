"""mPLUG-Owl2's visual abstractor as an option of the vision adapter: the sequence holds CLS + K image
tokens instead of CLS + N; gradients reach the queries; masked image modeling is refused; cached decoding
still equals a full forward; under `language` the abstractor trains while the rest of vision stays."""

from __future__ import annotations

import pytest
import torch

from model import LMHead, ModelConfig
from model.generation import decode_step, prefill

K = 3


def build(queries: int = K, seed: int = 0):
    torch.manual_seed(seed)
    config = ModelConfig.from_size("debug", vision={"abstractor_queries": queries})
    return config, config.build().eval()


def test_text_sees_k_image_tokens_instead_of_n():
    config, model = build()
    plain = ModelConfig.from_size("debug").build().eval()
    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.randint(5, 100, (2, 6))
    out = model({"pixels": pixels, "text_ids": ids})
    assert out.layout.segment("vision").stop - out.layout.segment("vision").start == 1 + K
    assert out.hidden.shape == (2, 1 + K + 6, config.dim)
    n = config.vision.num_patches
    assert n > K and plain({"pixels": pixels, "text_ids": ids}).hidden.shape[1] == 1 + n + 6
    out.hidden.sum().backward()
    q = model.adapters["vision"].abstractor.queries
    assert q.grad is not None and float(q.grad.abs().sum()) > 0


def test_masked_image_modeling_is_refused():
    _, model = build()
    with pytest.raises(ValueError, match="abstractor"):
        model({"pixels": torch.randn(1, 3, 32, 32), "pixel_mask": torch.zeros(1, 4, dtype=torch.bool)})


def test_cached_decode_equals_full_forward_with_the_abstractor():
    config, model = build()
    head = LMHead(config.dim, config.text.vocab_size).eval()
    B, L = 2, 5
    ids = torch.randint(5, 100, (B, L), generator=torch.Generator().manual_seed(2))
    inputs = {"pixels": torch.randn(B, 3, 32, 32, generator=torch.Generator().manual_seed(1)), "text_ids": ids}
    hidden, state = prefill(model, inputs)
    seq = ids
    with torch.no_grad():
        for t in range(4):
            cached = head(hidden)
            full = model({**inputs, "text_ids": seq, "text_causal_start": torch.full((B,), L)})
            reference = head(full.hidden[:, full.layout.segment("text").start + L + t - 1])
            torch.testing.assert_close(cached, reference, rtol=0, atol=1e-5)
            nxt = cached.argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            hidden = decode_step(model, nxt, state)


def test_language_setting_trains_the_abstractor_but_not_the_rest_of_vision():
    from tasks.instruct import InstructModel, trains

    config, _ = build()
    names = [n for n, _ in InstructModel(config).named_parameters()]
    abstractor = [n for n in names if ".abstractor." in n]
    assert abstractor and all(trains(n, "language") for n in abstractor)
    assert not trains("backbone.adapters.vision.stem.proj.weight", "language")
    assert not any(trains(n, "text") for n in abstractor)


def test_beit3_interop_refuses_an_abstractor():
    from model.interop.beit3 import omniway_to_beit3

    config = ModelConfig.from_size("debug", modalities=["vision", "text"], vision={"abstractor_queries": K})
    with pytest.raises(ValueError, match="abstractor"):
        omniway_to_beit3(config.build().state_dict(), config)
