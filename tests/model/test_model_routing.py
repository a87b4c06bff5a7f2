"""Routing by explicit layouts, attention masks (padding, prefix-LM) and the audio adapter's padding."""

import torch

from model import Layout, ModelConfig
from model.routing import Experts


def _model(**kw):
    torch.manual_seed(0)
    return ModelConfig.from_size("debug", **kw).build().eval()


def test_model_experts_route_segments_to_their_modality():
    experts = Experts(lambda: torch.nn.Linear(4, 3), ("vision", "text"))
    x = torch.randn(5, 2, 4)  # (T, B, C): experts see sequence-first activations
    layout = Layout.contiguous([("text", 2), ("vision", 3)])
    y = experts(x, layout)
    torch.testing.assert_close(y[:2], experts["text"](x[:2]))
    torch.testing.assert_close(y[2:], experts["vision"](x[2:]))
    # the same tokens described per token (B, T) give the same result through the gather/scatter path
    ids = torch.tensor([[1, 1, 0, 0, 0]] * 2)
    torch.testing.assert_close(experts(x, Layout.interleaved(ids, ("vision", "text"))), y)


def test_model_inference_routing_writes_segments_in_place_with_the_same_values():
    # without autograd, linear experts write their segments into one output instead of concatenating;
    # the values must be those of the concatenating path (what training runs), bias or none
    from model.ops import Linear

    for bias in (True, False):
        torch.manual_seed(0)
        experts = Experts(lambda: Linear(8, 6, bias=bias), ("vision", "text", "audio"))
        x = torch.randn(9, 3, 8)  # (T, B, C)
        layout = Layout.contiguous([("vision", 4), ("text", 3), ("audio", 2)])
        trained = experts(x, layout)  # grad enabled: per-segment outputs concatenated
        assert trained.requires_grad
        with torch.no_grad():
            fast = experts(x, layout)
        assert fast.shape == (9, 3, 6) and fast.is_contiguous()
        torch.testing.assert_close(fast, trained.detach(), atol=0, rtol=0)
        torch.testing.assert_close(fast[4:7], experts["text"](x[4:7]).detach(), atol=0, rtol=0)
    # a module with forward hooks runs its forward (ZeRO-3 gathers partitioned weights in a pre-hook):
    # here the hook swaps in the real weight of an emptied one, as the gathering does
    full = experts["vision"].weight.data.clone()
    experts["vision"].weight.data = torch.empty(0)
    experts["vision"].register_forward_pre_hook(lambda m, a: setattr(m.weight, "data", full))
    with torch.no_grad():
        torch.testing.assert_close(experts(x, layout), fast, atol=0, rtol=0)


def test_model_interleaved_layout_matches_permuted_contiguous():
    # attention without position bias is permutation-equivariant, so shuffling tokens and routing them by a
    # per-token indicator must give the shuffled contiguous result
    model = _model(fusion_layers=0)
    inputs = {"pixels": torch.randn(2, 3, 32, 32), "text_ids": torch.randint(0, 512, (2, 6))}
    with torch.no_grad():
        x, layout, _ = model.embed(inputs)
        ref = model.encoder(x, layout)
        perm = torch.randperm(x.shape[1])
        names = model.config.modalities
        ids = torch.tensor([names.index("vision")] * 17 + [names.index("text")] * 6)[perm].expand(2, -1)
        got = model.encoder(x[:, perm], Layout.interleaved(ids, names))
    torch.testing.assert_close(got, ref[:, perm], atol=1e-5, rtol=1e-5)


def test_model_padding_tokens_do_not_leak():
    model = _model()
    ids = torch.randint(3, 512, (2, 8))
    pad = torch.zeros(2, 8, dtype=torch.bool)
    pad[0, 5:] = True
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = model({"pixels": pixels, "text_ids": ids, "text_padding_mask": pad})
        ids2 = ids.clone()
        ids2[0, 5:] = 7  # change only padded tokens
        b = model({"pixels": pixels, "text_ids": ids2, "text_padding_mask": pad})
        c = model({"pixels": pixels, "text_ids": ids2})  # same ids, padding now visible
    torch.testing.assert_close(a.tokens["text"][0, :5], b.tokens["text"][0, :5])
    torch.testing.assert_close(a.pooled["vision"], b.pooled["vision"])
    assert not torch.allclose(a.pooled["vision"][0], c.pooled["vision"][0], atol=1e-4)
    assert a.padding["text"] is pad or torch.equal(a.padding["text"], pad)
    assert a.padding["vision"].sum() == 0


def test_model_prefix_lm_mask_is_causal_over_the_response():
    model = _model()
    pixels = torch.randn(1, 3, 32, 32)
    ids = torch.randint(3, 512, (1, 10))
    start = torch.tensor([4])  # prompt = text[:4], response = text[4:]
    with torch.no_grad():
        a = model({"pixels": pixels, "text_ids": ids, "text_causal_start": start})
        ids2 = ids.clone()
        ids2[0, 7] = (ids[0, 7] + 1) % 512  # change a response token
        b = model({"pixels": pixels, "text_ids": ids2, "text_causal_start": start})
        ids3 = ids.clone()
        ids3[0, 2] = (ids[0, 2] + 1) % 512  # change a prompt token
        c = model({"pixels": pixels, "text_ids": ids3, "text_causal_start": start})
    # media, prompt and earlier response tokens cannot see response token 7
    torch.testing.assert_close(a.hidden[:, : 17 + 7], b.hidden[:, : 17 + 7])
    assert not torch.allclose(a.hidden[:, 17 + 7 :], b.hidden[:, 17 + 7 :], atol=1e-4)
    # the prompt is bidirectional: the image sees a change in it
    assert not torch.allclose(a.pooled["vision"], c.pooled["vision"], atol=1e-4)


def test_model_audio_frames_become_padding():
    model = _model(modalities=("audio",))
    fbank = torch.randn(2, 30, 128)
    frames = torch.tensor([30, 9])
    with torch.no_grad():
        a = model({"fbank": fbank, "fbank_frames": frames})
        fbank2 = fbank.clone()
        fbank2[1, 12:] = 5.0  # frames past the valid length, beyond the patch holding frame 9
        b = model({"fbank": fbank2, "fbank_frames": frames})
    pad = a.padding["audio"]
    assert pad.shape == (2, 1 + 8) and not pad[0].any()
    assert pad[1].tolist() == [False] * 4 + [True] * 5  # CLS + ceil(9 / 4) = 3 valid patches
    torch.testing.assert_close(a.tokens["audio"][1, :4], b.tokens["audio"][1, :4])


def test_model_fusion_expert_only_for_multimodal_sequences():
    model = _model(fusion_layers=1)
    top = model.encoder.blocks[-1]
    calls = []
    top.ffn["fusion"].register_forward_hook(lambda *a: calls.append("fusion"))
    top.ffn["text"].register_forward_hook(lambda *a: calls.append("text"))
    with torch.no_grad():
        model({"text_ids": torch.randint(0, 512, (1, 5))})
        assert calls == ["text"]
        model({"text_ids": torch.randint(0, 512, (1, 5)), "pixels": torch.randn(1, 3, 32, 32)})
        assert calls == ["text", "fusion"]


def test_model_mask_tokens_replace_masked_patches():
    model = _model()
    pixels = torch.randn(1, 3, 32, 32)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, 3] = True
    with torch.no_grad():
        a = model({"pixels": pixels, "pixel_mask": mask})
        pixels2 = pixels.clone()
        pixels2[..., 0:8, 24:32] += 3.0  # patch 3 (row 0, column 3) only
        b = model({"pixels": pixels2, "pixel_mask": mask})
        c = model({"pixels": pixels2})
    torch.testing.assert_close(a.hidden, b.hidden)
    assert not torch.allclose(a.hidden, c.hidden, atol=1e-4)
