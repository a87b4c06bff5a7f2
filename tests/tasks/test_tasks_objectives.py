"""Objectives, masks, recipes and metrics on the debug model (CPU, no Ray)."""

from __future__ import annotations

import math

import pytest
import torch

from model import ModelConfig
from omniway_shard_fixtures import numpy_batch
from tasks import (GROUPS, RECIPES, BatchSpec, Collator, PretrainModel, get_recipe, group_batch_sizes,
                   recall_at_k, retrieval_metrics)
from tasks.masking import block_mask, random_token_mask, span_mask
from tasks.objectives import CrossModalContrast, DenoisingContrast, MaskedAudioModeling, MaskedLanguageModeling

SPEC = BatchSpec(image_size=32, shard_resolution=32, patch_size=8, max_text_tokens=16, max_audio_frames=64)


def batch_for(recipe, groups, n=4, seed=0):
    col = Collator(SPEC, recipe)
    g = torch.Generator().manual_seed(seed)
    return {grp: col.add_masks(grp, col.collate(grp, numpy_batch(grp, n, seed=seed)), g) for grp in groups}


def grads(module, prefix):
    return [p.grad for n, p in module.named_parameters() if n.startswith(prefix)]


def has_grad(module, prefix) -> bool:
    return any(g is not None and g.abs().sum() > 0 for g in grads(module, prefix))


# -- masks ---------------------------------------------------------------------------------------------
def test_text_mask_ratio_and_only_valid_positions():
    valid = torch.ones(3, 40, dtype=torch.bool)
    valid[0, 30:] = False
    valid[:, 0] = False  # bos
    m = random_token_mask(valid, 0.15, torch.Generator().manual_seed(0))
    assert not (m & ~valid).any()
    assert m.sum(1).tolist() == [round(29 * 0.15), round(39 * 0.15), round(39 * 0.15)]
    m50 = random_token_mask(valid, 0.5, torch.Generator().manual_seed(0))
    assert m50.sum(1).tolist() == [round(29 * 0.5), round(39 * 0.5), round(39 * 0.5)]


def test_block_mask_is_exact_and_blocky():
    m = block_mask(4, 14, 0.4, torch.Generator().manual_seed(1))
    assert m.shape == (4, 196) and m.sum(1).tolist() == [78] * 4  # BEiT-3: ~75 of 196
    # blocky: far more masked neighbours than an i.i.d. mask of the same density would give
    grid = m.view(4, 14, 14).float()
    same = (grid[:, :, 1:] * grid[:, :, :-1]).sum() / grid[:, :, 1:].sum()
    assert same > 0.6
    again = block_mask(4, 14, 0.4, torch.Generator().manual_seed(1))
    assert torch.equal(m, again)


def test_span_mask_covers_only_valid_audio():
    valid = torch.zeros(2, 30, dtype=torch.bool)
    valid[0, :30] = True
    valid[1, :12] = True
    m = span_mask(valid, 0.55, 5, torch.Generator().manual_seed(0))
    assert not (m & ~valid).any()
    assert m.sum(1).tolist() == [round(0.55 * 30), round(0.55 * 12)]


# -- objectives: finite, gradients where expected ------------------------------------------------------
def test_mlm_loss_finite_and_zero_when_nothing_masked():
    obj = MaskedLanguageModeling(16, 50)
    emb = torch.nn.Parameter(torch.randn(50, 16))
    tokens = torch.randn(2, 5, 16, requires_grad=True)
    targets = torch.randint(0, 50, (2, 5))
    mask = torch.zeros(2, 5, dtype=torch.bool)
    out = obj(tokens, targets, mask, emb)
    assert out["loss"].item() == 0.0 and torch.isfinite(out["loss"])
    mask[0, 1] = mask[1, 3] = True
    out = obj(tokens, targets, mask, emb)
    out["loss"].backward()
    assert math.isfinite(out["loss"].item()) and out["loss"].item() > 0
    assert tokens.grad[~mask].abs().sum() == 0 and tokens.grad[mask].abs().sum() > 0
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_denoising_teacher_gets_no_gradient():
    student = torch.randn(2, 6, 8, requires_grad=True)
    teacher = torch.randn(2, 6, 8, requires_grad=True)
    mask = torch.rand(2, 6) > 0.4
    out = DenoisingContrast(0.4)(student, teacher, mask)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and teacher.grad is None
    assert student.grad[mask].abs().sum() > 0 and student.grad[~mask].abs().sum() == 0


def test_audio_modeling_regression_and_contrast_parts():
    obj = MaskedAudioModeling(16, n_mels=8, patch_frames=2, contrast_weight=0.5)
    tokens = torch.randn(2, 5, 16, requires_grad=True)
    fbank = torch.randn(2, 9, 8)  # 9 frames -> 5 patches, last one padded
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[:, 1:3] = True
    out = obj(tokens, mask, fbank)
    assert torch.allclose(out["loss"], out["regression"] + 0.5 * out["contrast"])
    out["loss"].backward()
    assert tokens.grad[~mask].abs().sum() == 0


def test_contrast_learns_temperature_and_both_projections():
    obj = CrossModalContrast(16, 8, ("vision", "text", "audio"))
    pooled = {"vision": torch.randn(4, 16), "text": torch.randn(4, 16)}
    out = obj(pooled)
    out["loss"].backward()
    assert math.isfinite(out["loss"].item()) and "vision_text" in out and "vision_audio" not in out
    assert obj.head.log_scale.grad is not None
    assert obj.head.proj["vision"].weight.grad.abs().sum() > 0 and obj.head.proj["text"].weight.grad.abs().sum() > 0
    assert obj.head.proj["audio"].weight.grad is None
    assert abs(out["temperature"].item() - 0.07) < 1e-4


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_each_recipe_is_finite_and_routes_groups(recipe):
    r = get_recipe(recipe)
    torch.manual_seed(0)
    model = PretrainModel(ModelConfig.from_size("debug"), r, mim_target="tokens", codebook_size=64)
    out = model(batch_for(r, list(r.mix)))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    mods = {m for g in r.mix for m in GROUPS[g]}
    needs = {"mlm": "text", "mim": "image", "mam": "audio"}
    for objective in r.weights:
        if needs.get(objective, "text") in mods:  # beit3's mix has no audio: mam has nothing to run on
            assert objective in out and torch.isfinite(out[objective])
    expected = {"beit3": {"mlm/text", "mim/image", "mlm/image_text", "mim/image_text"},
                "one-peace": {"contrast/image_text", "contrast/audio_text", "denoise/text", "denoise/image"},
                "omni": {"mam/audio", "contrast/triplet", "mim/image_audio", "denoise/triplet"},
                "opt": {"mam/audio", "modality/image_text", "modality/triplet", "match/audio_text",
                        "match/triplet"}}[recipe]
    assert expected <= set(out)
    if recipe == "beit3":  # masked data modeling only: no contrast, no audio objective on these groups
        assert not any(k.startswith(("contrast", "denoise")) for k in out)
    assert has_grad(model, "backbone.encoder")


def test_text_only_batch_leaves_other_experts_without_gradient():
    r = get_recipe("beit3")
    model = PretrainModel(ModelConfig.from_size("debug", expert_policy="ffn"), r, mim_target="pixels")
    out = model(batch_for(r, ["text"]))
    out["loss"].backward()
    assert has_grad(model, "backbone.adapters.text") and has_grad(model, "mlm.")
    assert not has_grad(model, "backbone.adapters.vision") and not has_grad(model, "mim.")
    assert not has_grad(model, "backbone.adapters.audio")


def test_group_batch_sizes_follow_mix():
    assert group_batch_sizes({"text": 1, "image": 1, "image_text": 1}, 6) == {"text": 2, "image": 2, "image_text": 2}
    sizes = group_batch_sizes({"text": 1, "image": 1, "image_text": 2}, 8, available={"text", "image_text"})
    assert sizes == {"text": 3, "image_text": 5} or sizes == {"text": 2, "image_text": 6}
    assert sum(group_batch_sizes(RECIPES["omni"].mix, 10).values()) == 10
    with pytest.raises(ValueError):
        group_batch_sizes({"text": 1}, 4, available={"audio"})
    assert set(GROUPS) >= set(RECIPES["omni"].mix)


def test_recall_at_k():
    e = torch.nn.functional.normalize(torch.randn(10, 8), dim=-1)
    assert recall_at_k(e, e, (1, 5)) == {1: 1.0, 5: 1.0}
    shifted = e.roll(1, 0)  # every query's positive is another row's best match
    assert recall_at_k(e, shifted, (1,))[1] == 0.0
    m = retrieval_metrics({"image": e, "text": e}, [("image", "text")])
    assert m["image_to_text/r@1"] == 1.0 and m["text_to_image/r@1"] == 1.0 and m["image_text/chance@1"] == 0.1
