"""VQ-KD visual tokenizer: codebook usage after short training on real images, batch-size
invariance of the ids, save/load round trip, quantizer EMA and dead-code restarts."""

from __future__ import annotations

import glob

import numpy as np
import pytest
import torch
from PIL import Image

from model.vector_quantizer import NormEMAVectorQuantizer
from model.pixels import patchify, to_float_pixels, unpatchify
from model.typed_config import ConfigError
from model.visual_tokenizer import VQKD, VQKDConfig

STAMPS = "/usr/share/tuxpaint/stamps"
RES = 32


def tiny(**kw) -> VQKDConfig:
    base = dict(image_resolution=RES, patch_size=8, dim=32, depth=2, heads=2, ffn_dim=64, decoder_depth=1,
                codebook_size=32, code_dim=8, restart_every=10, decay=0.9)
    base.update(kw)
    return VQKDConfig(**base)


def stamp_pixels(n: int, offset: int = 0) -> torch.Tensor:
    """n tuxpaint stamps (transparency on white), resized to RES: (n, 3, RES, RES) uint8."""
    paths = sorted(glob.glob(f"{STAMPS}/**/*.png", recursive=True))[::3][offset:offset + n]
    assert len(paths) == n, f"need {n} tuxpaint stamps under {STAMPS} (apt-get install tuxpaint-stamps-default)"
    out = []
    for p in paths:
        img = Image.open(p).convert("RGBA")
        canvas = Image.new("RGBA", img.size, "white")
        canvas.alpha_composite(img)
        out.append(np.asarray(canvas.convert("RGB").resize((RES, RES), Image.BICUBIC)).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out))


@pytest.fixture(scope="module")
def trained():
    """A tokenizer after 80 AdamW steps on 96 stamps (the loop here is test scaffolding: the stage trains
    through pipelines.train; this checks the model and quantizer learn on their own)."""
    torch.manual_seed(0)
    train, held_out = stamp_pixels(96), stamp_pixels(48, offset=96)
    model = VQKD(tiny())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(80):
        idx = torch.randperm(len(train), generator=g)[:32]
        out = model(train[idx])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return model.eval(), held_out, float(out["rec_loss"])


def test_codebook_usage_after_short_training(trained):
    model, held_out, rec = trained
    ids = model.tokenize(held_out)  # (48, 16)
    usage, perplexity = NormEMAVectorQuantizer.usage(ids, model.config.codebook_size)
    print(f"\nVQ-KD usage on 48 held-out stamps: {usage:.2%} of {model.config.codebook_size} codes, "
          f"perplexity {perplexity:.1f}, train rec loss {rec:.4f}")
    # a collapsed codebook uses 1-2 codes (perplexity ~1); restarts and a fast EMA (decay 0.9 for a
    # short run) keep most codes alive
    assert usage >= 0.5
    assert perplexity >= 8.0
    assert ids.shape == (48, (RES // 8) ** 2)


def test_same_ids_whatever_the_batch_size(trained):
    model, held_out, _ = trained
    whole = model.tokenize(held_out)
    one_by_one = torch.cat([model.tokenize(held_out[i:i + 1]) for i in range(len(held_out))])
    odd = torch.cat([model.tokenize(held_out[i:i + 7]) for i in range(0, len(held_out), 7)])
    assert torch.equal(whole, one_by_one)
    assert torch.equal(whole, odd)


def test_save_load_round_trip_gives_identical_ids(trained, tmp_path):
    model, held_out, _ = trained
    model.save(str(tmp_path))
    loaded = VQKD.load(str(tmp_path))
    assert torch.equal(model.tokenize(held_out), loaded.tokenize(held_out))
    assert loaded.config == model.config
    assert torch.equal(loaded.quantizer.codebook, model.quantizer.codebook)


def test_wrong_resolution_is_refused(trained):
    model, _, _ = trained
    with pytest.raises(ValueError, match="expects pixels"):
        model.tokenize(torch.zeros(1, 3, RES * 2, RES * 2, dtype=torch.uint8))


def test_config_checks():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        tiny(image_resolution=30)
    with pytest.raises(ValueError, match="int16"):
        tiny(codebook_size=40000)
    with pytest.raises(ConfigError, match=r"^VQKDConfig\.bogus: unknown key"):
        VQKDConfig.from_dict({**tiny().to_dict(), "bogus": 1})


def test_gradients_reach_the_encoder_through_the_quantizer():
    torch.manual_seed(0)
    model = VQKD(tiny())
    model(stamp_pixels(4))["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert model.encoder.adapters["vision"].stem.proj.weight.grad.abs().sum() > 0 if hasattr(
        model.encoder.adapters["vision"].stem, "proj") else True


def test_quantizer_ema_moves_hit_codes_and_restarts_dead_ones():
    torch.manual_seed(0)
    q = NormEMAVectorQuantizer(16, 4, decay=0.5, dead_threshold=0.5, restart_every=1).train()
    z = torch.randn(2, 8, 4)
    q(z)  # seeds the codebook from z, then one EMA step and a restart pass
    assert bool(q.initialized)
    assert torch.allclose(q.codebook.norm(dim=-1), torch.ones(16), atol=1e-5)
    # feed one direction only: every other code dies and is restarted onto that batch's inputs
    target = torch.nn.functional.normalize(torch.tensor([1.0, 0.0, 0.0, 0.0]), dim=0)
    for _ in range(6):
        q(target.expand(2, 8, 4) + 1e-4 * torch.randn(2, 8, 4))
    assert (q.codebook @ target > 0.99).float().mean() > 0.5


def test_patchify_round_trip():
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(unpatchify(patchify(x, 4), 4), x)


def test_float_pixels_are_the_documented_mapping():
    # the in-place conversion must give exactly (x / 255 - 0.5) / 0.5 and leave its input alone
    x = torch.randint(0, 256, (2, 3, RES, RES), dtype=torch.uint8)
    before = x.clone()
    assert torch.equal(to_float_pixels(x), (x.float() / 255.0 - 0.5) / 0.5)
    assert torch.equal(x, before)
    f = torch.rand(2, 3, RES, RES)
    assert to_float_pixels(f) is f


def test_quantizer_stays_float32_under_bf16_autocast():
    # training runs under autocast (bf16 on GPUs): the code lookup and the EMA statistics must not follow it,
    # or ids would differ from the float32 tokenization the shards stage does
    torch.manual_seed(0)
    q = NormEMAVectorQuantizer(512, 32, restart_every=0)
    z = torch.randn(4096, 32)  # many near ties among 512 codes: bf16 products flip some argmaxes
    ids = q.lookup(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(q.lookup(z), ids)
    q.train()
    q.initialized.fill_(1)
    start = q.codebook.clone()
    flat = torch.nn.functional.normalize(z, dim=-1)
    q._ema_update(flat, ids)
    fp32_codebook = q.codebook.clone()
    q.codebook.copy_(start)
    q.cluster_size.zero_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q._ema_update(flat, ids)
    assert torch.equal(q.codebook, fp32_codebook)
