"""Every registered size at reduced depth: finite outputs, gradients reach exactly the experts of the
modalities present, activation checkpointing changes nothing."""

import copy

import pytest
import torch

from model import SIZES, ModelConfig


def _small(name, **kw):
    base = SIZES[name]
    # full width (that is what a size is), shallow, small tables: the sweep must run on 2 CPU cores
    over = dict(
        layers=2 if name == "debug" else 1,
        text={"vocab_size": 256, "max_positions": 20},
        vision={"img_size": 2 * base.vision.patch_size},
        audio={"max_tokens": 12},
    )
    over.update(kw)
    return ModelConfig.from_size(name, **over)


def _inputs(config, modalities, batch=2):
    g = torch.Generator().manual_seed(0)
    out = {}
    if "vision" in modalities:
        s = config.vision.img_size
        out["pixels"] = torch.randn(batch, 3, s, s, generator=g)
    if "text" in modalities:
        out["text_ids"] = torch.randint(0, config.text.vocab_size, (batch, 7), generator=g)
        pad = torch.zeros(batch, 7, dtype=torch.bool)
        pad[-1, 5:] = True
        out["text_padding_mask"] = pad
    if "audio" in modalities:
        out["fbank"] = torch.randn(batch, 23, config.audio.n_mels, generator=g)
        out["fbank_frames"] = torch.tensor([23] + [11] * (batch - 1))
    return out


def _grads(model, inputs):
    model.zero_grad(set_to_none=True)
    out = model(inputs)
    loss = sum(t.float().pow(2).mean() for t in out.tokens.values())
    loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_model_size_sweep(name):
    torch.manual_seed(0)
    config = _small(name, fusion_layers=1)
    model = config.build()
    names = dict(model.named_parameters())

    # all modalities present: every parameter but the unused mask tokens gets a gradient; since the sequence
    # is multimodal, the top (fusion) layer's modality FFNs are bypassed
    out, grads = _grads(model, _inputs(config, ("vision", "text", "audio")))
    assert all(torch.isfinite(t).all() for t in out.tokens.values())
    top = f"encoder.blocks.{config.layers - 1}"
    unreached = {n for n in names if n not in grads}
    expected_unreached = {"adapters.vision.mask_token", "adapters.audio.mask_token"} | {
        n for n in names if n.startswith((f"{top}.ffn.", f"{top}.ffn_norm.")) and ".fusion." not in n
    }
    assert unreached == expected_unreached
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())

    # image only: no gradient for text/audio experts or the fusion expert (monomodal input)
    out, grads = _grads(model, _inputs(config, ("vision",)))
    assert set(out.tokens) == {"vision"}
    for n in names:
        parts = n.split(".")
        if "text" in parts or "audio" in parts or "fusion" in parts:
            assert n not in grads, n
    assert any(".vision." in n for n in grads) and "adapters.vision.stem.proj.weight" in grads


@pytest.mark.parametrize("name", sorted(SIZES))
def test_model_activation_checkpointing_same_result(name):
    torch.manual_seed(0)
    plain = _small(name, drop_path=0.2).build().train()
    assert _small("debug", checkpoint_activations=True).build().encoder.checkpoint_activations
    ckpt = copy.deepcopy(plain)  # same weights; building a second big model would double the test's time
    ckpt.encoder.checkpoint_activations = True
    inputs = _inputs(plain.config, ("vision", "text"))
    torch.manual_seed(1)
    out_a, grads_a = _grads(plain, inputs)
    torch.manual_seed(1)
    out_b, grads_b = _grads(ckpt, inputs)
    torch.testing.assert_close(out_b.hidden, out_a.hidden, rtol=0, atol=0)
    assert grads_a.keys() == grads_b.keys()
    for n in grads_a:
        torch.testing.assert_close(grads_b[n], grads_a[n], rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("policy", ["all", "ffn", "kv"])
@pytest.mark.parametrize("options", [{}, {"layer_scale": 0.1, "rel_pos_buckets": 16, "max_rel_pos": 32,
                                          "subln": False, "vision": {"stem": "hmlp"}}])
def test_model_policies_and_options(policy, options):
    config = ModelConfig.from_size("debug", expert_policy=policy, fusion_layers=1, **options)
    model = config.build()
    out, grads = _grads(model, _inputs(config, ("vision", "text", "audio")))
    assert out.hidden.shape == (2, 17 + 7 + 7, 64)
    assert all(torch.isfinite(g).all() for g in grads.values())
    if "rel_pos_buckets" in options:
        assert "encoder.rel_pos.table.weight" in grads
    # monomodal text: vision experts untouched under every policy
    _, grads = _grads(model, _inputs(config, ("text",)))
    assert not any("vision" in n.split(".") for n in grads)
