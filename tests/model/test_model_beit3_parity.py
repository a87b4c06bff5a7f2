"""Parity with torchscale 0.3.0's BEiT-3 (tiny random weights), loaded through model.interop.beit3."""

import pytest
import torch

from model import CheckpointKeyError, ModelConfig, MultiwayModel
from model.interop.beit3 import beit3_config, load_beit3, omniway_to_beit3
from tiny_beit3 import DIM, FFN, HEADS, IMG, LAYERS, MAXPOS, PATCH, VOCAB, tiny_inputs, torchscale_beit3_classes


@pytest.fixture(scope="module")
def torchscale_beit3():
    """A tiny torchscale BEiT3 with every parameter randomised (LN gains and biases included)."""
    with torchscale_beit3_classes() as (EncoderConfig, BEiT3):
        torch.manual_seed(0)
        args = EncoderConfig(
            encoder_embed_dim=DIM, encoder_attention_heads=HEADS, encoder_ffn_embed_dim=FFN, encoder_layers=LAYERS,
            vocab_size=VOCAB, img_size=IMG, patch_size=PATCH, multiway=True, layernorm_embedding=False,
            normalize_output=True, no_output_layer=True, max_source_positions=MAXPOS,
        )
        ref = BEiT3(args).eval()
        with torch.no_grad():
            for p in ref.parameters():
                p.copy_(torch.randn_like(p) * 0.3)
        yield ref


def _config(**kw):
    return ModelConfig.from_dict({
        "dim": DIM, "layers": LAYERS, "heads": HEADS, "ffn_dim": FFN, "modalities": ["vision", "text"],
        "expert_policy": "all", "vision": {"img_size": IMG, "patch_size": PATCH},
        "text": {"vocab_size": VOCAB, "max_positions": MAXPOS}, **kw,
    })


@pytest.mark.parametrize("fused_qkv", [True, False])
def test_model_parity_with_torchscale(torchscale_beit3, fused_qkv):
    ref = torchscale_beit3
    ours = MultiwayModel(_config(fused_qkv=fused_qkv)).eval()
    leftovers = load_beit3(ours, {"model": {"beit3." + k: v for k, v in ref.state_dict().items()}})
    assert leftovers == {}
    pixels, ids, pad = tiny_inputs()
    with torch.no_grad():
        cases = {
            "image": (ref(visual_tokens=pixels)["encoder_out"], ours({"pixels": pixels}).hidden),
            "text": (
                ref(textual_tokens=ids, text_padding_position=pad)["encoder_out"],
                ours({"text_ids": ids, "text_padding_mask": pad}).hidden,
            ),
            "image+text": (
                ref(textual_tokens=ids, visual_tokens=pixels, text_padding_position=pad)["encoder_out"],
                ours({"pixels": pixels, "text_ids": ids, "text_padding_mask": pad}).hidden,
            ),
        }
    for name, (expected, got) in cases.items():
        assert got.shape == expected.shape, name
        # outputs are O(1) after the final LN; any routing or mapping slip moves them by O(0.1)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=lambda m: f"{name}: {m}")
    # the MIM mask token maps too
    mask = torch.rand(3, (IMG // PATCH) ** 2, generator=torch.Generator().manual_seed(2)) < 0.5
    with torch.no_grad():
        expected = ref(visual_tokens=pixels, vision_masked_position=mask)["encoder_out"]
        got = ours({"pixels": pixels, "pixel_mask": mask}).hidden
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_model_beit3_round_trip(torchscale_beit3):
    ref = torchscale_beit3
    theirs = ref.state_dict()
    config = beit3_config(theirs, heads=HEADS)
    assert (config.dim, config.layers, config.ffn_dim, config.vision.img_size, config.vision.patch_size,
            config.text.vocab_size, config.text.max_positions) == (DIM, LAYERS, FFN, IMG, PATCH, VOCAB, MAXPOS)
    ours = MultiwayModel(config)
    load_beit3(ours, theirs)
    back = omniway_to_beit3(ours.state_dict(), config, prefix="")
    assert set(back) == set(theirs)
    for k in theirs:
        assert torch.equal(back[k], theirs[k]), k
    # and torchscale accepts it strictly
    ref.load_state_dict(back, strict=True)


def test_model_beit3_interpolates_vision_positions(torchscale_beit3):
    ours = MultiwayModel(_config(vision={"img_size": 2 * IMG, "patch_size": PATCH}))
    load_beit3(ours, torchscale_beit3.state_dict())
    grid = 2 * IMG // PATCH
    assert ours.adapters["vision"].pos_embed.shape[0] == 3 + grid * grid
    # CLS and offset rows are copied unchanged
    torch.testing.assert_close(ours.adapters["vision"].pos_embed[:3], torchscale_beit3.encoder.embed_positions.A.weight[:3])
    out = ours({"pixels": torch.randn(1, 3, 2 * IMG, 2 * IMG)})
    assert out.tokens["vision"].shape == (1, 1 + grid * grid, DIM)


def test_model_beit3_key_errors_are_listed(torchscale_beit3):
    theirs = dict(torchscale_beit3.state_dict())
    ours = MultiwayModel(_config())
    theirs["beit3_extra.head.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointKeyError) as err:
        load_beit3(ours, theirs)
    assert "beit3_extra.head.weight" in str(err.value)
    assert load_beit3(ours, theirs, ignore_extra=True).keys() == {"beit3_extra.head.weight"}
    del theirs["encoder.layers.1.ffn.B.fc2.bias"]
    with pytest.raises(CheckpointKeyError, match=r"encoder\.layers\.1\.ffn\.B\.fc2\.bias"):
        load_beit3(ours, theirs, ignore_extra=True)
    with pytest.raises(ValueError, match="expert_policy"):
        load_beit3(MultiwayModel(_config(expert_policy="ffn")), torchscale_beit3.state_dict())


def test_model_beit3_into_model_with_audio(torchscale_beit3):
    ours = MultiwayModel(_config(modalities=["vision", "text", "audio"]))
    with pytest.raises(CheckpointKeyError, match="adapters.audio"):
        load_beit3(ours, torchscale_beit3.state_dict())
    before = ours.adapters["audio"].proj.weight.clone()
    load_beit3(ours, torchscale_beit3.state_dict(), keep_other_modalities=True)
    assert torch.equal(ours.adapters["audio"].proj.weight, before)
