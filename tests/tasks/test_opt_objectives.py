"""OPT's modality level and the sample-level matching objectives on the debug model (CPU, no Ray): finite,
gradients exactly where the modalities they read are, and the draws behind them."""

from __future__ import annotations

import math

import pytest
import torch

from model import ModelConfig
from omniway_shard_fixtures import numpy_batch
from tasks import BatchSpec, Collator, PretrainModel, get_recipe
from tasks.matching import IGNORE, hard_negatives, triplet_labels, triplet_sources

SPEC = BatchSpec(image_size=32, shard_resolution=32, patch_size=8, max_text_tokens=16, max_audio_frames=64)


def batch_for(recipe, groups, n=4, seed=0):
    col = Collator(SPEC, recipe)
    g = torch.Generator().manual_seed(seed)
    return {grp: col.add_masks(grp, col.collate(grp, numpy_batch(grp, n, seed=seed)), g) for grp in groups}


def has_grad(module, prefix) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in module.named_parameters()
               if n.startswith(prefix))


def model_for(recipe, policy="ffn"):
    torch.manual_seed(0)
    return PretrainModel(ModelConfig.from_size("debug", expert_policy=policy), recipe, mim_target="tokens",
                         codebook_size=64)


def test_modality_level_masks_the_whole_text_of_its_rows():
    r = get_recipe("opt", modality_prob=0.5)
    b = batch_for(r, ["image_text"], n=6)["image_text"]
    rows, mask = b["modality_rows"], b["modality_mask"]
    assert rows.shape == (3,) and mask.shape == (3, b["text_ids"].shape[1])
    ids, pad = b["text_ids"][rows], b["text_padding_mask"][rows]
    # every token but padding, bos (2) and eos (3)
    assert torch.equal(mask, ~pad & (ids != 2) & (ids != 3))


@pytest.mark.parametrize("keep, reads, ignores", [(0, ("vision", "audio"), ()), (1, ("vision",), ("audio",)),
                                                  (2, ("audio",), ("vision",))])
def test_modality_level_reconstructs_text_from_the_kept_modalities_only(keep, reads, ignores):
    r = get_recipe("opt", weights={"modality": 1.0})
    model = model_for(r)
    b = batch_for(r, ["triplet"])
    b["triplet"]["modality_keep"] = torch.tensor([keep])  # image + audio, image alone, audio alone
    out = model(b)
    out["loss"].backward()
    assert math.isfinite(out["loss"].item()) and out["modality/triplet"] > 0
    assert set(k for k in out if k.startswith("modality")) >= {"modality", "modality/triplet", "modality/triplet/acc"}
    assert has_grad(model, "mlm.") and has_grad(model, "backbone.adapters.text")
    for m in reads:
        assert has_grad(model, f"backbone.adapters.{m}"), m
    for m in ignores:  # the dropped modality is not in the pass at all
        assert not has_grad(model, f"backbone.adapters.{m}"), m
    assert not hasattr(model, "match") and not hasattr(model, "mim")  # only the recipe's heads


def test_pair_matching_trains_the_itm_head_and_triplets_the_five_way_one():
    r = get_recipe("opt", weights={"match": 1.0})
    model = model_for(r)
    b = batch_for(r, ["image_text", "audio_text"])
    # 4 positives + 2 x 4 hard negatives, none ambiguous (the fixture's texts all differ)
    assert model.group_losses("image_text", b["image_text"])["match"]["count"] == 12
    out = model(b)
    out["loss"].backward()
    assert math.isfinite(out["loss"].item()) and 0 <= out["match/image_text/acc"] <= 1
    assert has_grad(model, "match.head") and not has_grad(model, "triplet_match.")
    assert has_grad(model, "backbone.adapters.vision") and has_grad(model, "backbone.adapters.audio")
    assert not has_grad(model, "mlm.")  # matching has no token head
    model.zero_grad(set_to_none=True)
    out = model(batch_for(r, ["triplet"]))
    out["loss"].backward()
    assert math.isfinite(out["loss"].item()) and "match/triplet" in out
    assert has_grad(model, "triplet_match.head") and not has_grad(model, "match.head")


def test_matching_heads_get_nothing_where_matching_does_not_run():
    r = get_recipe("opt")
    model = model_for(r)
    out = model(batch_for(r, ["text", "image"]))  # single modalities: nothing to match
    out["loss"].backward()
    assert "match" not in out and "modality" not in out
    assert not has_grad(model, "match.") and not has_grad(model, "triplet_match.")
    assert has_grad(model, "mlm.") and has_grad(model, "mim.")
    beit3 = model_for(get_recipe("beit3"))  # a recipe without matching builds no matching head at all
    assert not any(n.startswith(("match.", "triplet_match.")) for n, _ in beit3.named_parameters())
    out = beit3(batch_for(get_recipe("beit3"), ["image_text"]))
    assert not any(k.startswith(("match", "modality")) for k in out)


def test_hard_negatives_follow_the_similarity_and_skip_self_and_duplicates():
    sim = torch.tensor([[9.0, 8.0, -9.0, 0.0], [8.0, 9.0, 0.0, -9.0], [0.0, 0.0, 9.0, 7.0], [1.0, 1.0, 7.0, 9.0]])
    allowed = ~torch.eye(4, dtype=torch.bool)
    allowed[3, 2] = False  # row 3's candidate 2 holds the same text as row 3
    picks = torch.stack([hard_negatives(sim * 0.5, allowed, u)[0] for u in torch.rand(400, 4)])  # (400, 4)
    assert not (picks == torch.arange(4)).any() and not (picks[:, 3] == 2).any()
    assert (picks[:, 0] == 1).float().mean() > 0.9  # the most similar other sample dominates
    assert (picks[:, 2] == 3).float().mean() > 0.7
    none_allowed = torch.zeros(4, 4, dtype=torch.bool)
    _, valid = hard_negatives(sim, none_allowed, torch.rand(4))
    assert not valid.any()


def test_triplet_states_say_which_modality_came_from_where():
    state = torch.tensor([0, 1, 2, 3, 4])
    partner = torch.tensor([[1, 2], [2, 3], [3, 4], [1, 0], [0, 1]])
    src = triplet_sources(state, partner)
    assert src["text"].tolist() == [0, 1, 2, 3, 4]
    assert src["image"].tolist() == [0, 2, 2, 1, 0]  # swapped in states 1 (image), 3 (text odd), 4 (none)
    assert src["audio"].tolist() == [0, 1, 3, 1, 1]  # swapped in 2 (audio), 3 (with the image), 4 (another)
    texts = torch.tensor([[5, 6], [7, 8], [9, 9], [7, 8], [1, 1]])  # rows 1 and 3 hold the same text
    labels = triplet_labels(state, src, texts)
    # row 3: its image and audio come from row 1, whose text is row 3's own: not a mismatch after all
    assert labels.tolist() == [0, 1, 2, IGNORE, 4]


# -- the causal decoder of the modality level (prefix-LM, LM head) ----------------------------------------
def causal_recipe(**overrides):
    return get_recipe("opt", modality_decoder="causal", **overrides)


def test_causal_decoder_predicts_every_token_after_bos_and_rejects_unknown_decoders():
    b = batch_for(causal_recipe(modality_prob=1.0), ["image_text"])["image_text"]
    ids, pad = b["text_ids"], b["text_padding_mask"]
    assert torch.equal(b["modality_mask"], ~pad & (ids != 2))  # eos (3) is generated too
    with pytest.raises(ValueError, match="modality_decoder"):
        get_recipe("opt", modality_decoder="beam")


def test_causal_modality_level_trains_the_lm_head_and_the_text_path_only():
    model = model_for(causal_recipe())
    assert model.lm._tied[0] is model.backbone.text_embedding  # the LM head's output matrix is the embedding
    assert [m for m, _ in model.external_parameters()] == [model.mlm.head, model.lm.head]
    b = batch_for(causal_recipe(), ["image_text", "triplet"])
    out = model(b)  # routed in the mixed batch beside the other objectives
    assert {"modality/image_text", "modality/triplet", "mlm", "mim", "match"} <= set(out)
    assert math.isfinite(out["loss"].item())
    model.zero_grad(set_to_none=True)
    r = model.group_losses("image_text", b["image_text"])["modality"]
    assert math.isfinite(r["loss"].item()) and r["loss"] > 0 and r["count"] > 0
    r["loss"].backward()
    assert has_grad(model, "lm.head") and has_grad(model, "backbone.adapters.text")
    assert has_grad(model, "backbone.adapters.vision")
    assert model.backbone.text_embedding.weight.grad.abs().sum() > 0  # input embedding and tied output matrix
    for head in ("mlm.", "mim.", "match.", "triplet_match."):  # the other heads: not this loss's
        assert not has_grad(model, head), head
    no_match = model_for(causal_recipe(weights={"mlm": 1.0, "modality": 1.0}))
    assert not any(n.startswith(("match.", "triplet_match.")) for n, _ in no_match.named_parameters())
    only = model_for(causal_recipe(weights={"modality": 1.0}))  # no MLM objective, no MLM decoder: no MLM head
    assert not hasattr(only, "mlm") and hasattr(only, "lm")


def test_causal_modality_level_text_positions_cannot_see_later_text():
    torch.manual_seed(0)
    recipe = causal_recipe(weights={"modality": 1.0}, modality_prob=1.0)
    model = model_for(recipe).eval()
    b = batch_for(recipe, ["image_text"])["image_text"]
    j = 3  # tokens 1, 2 (predicted from positions 0, 1) are scored; tokens from index j on are changed
    b["modality_mask"][:, j:] = False
    later = ~b["text_padding_mask"] & (torch.arange(b["text_ids"].shape[1]) >= j)
    changed = dict(b, text_ids=torch.where(later, 100 + (b["text_ids"] * 7) % 50, b["text_ids"]))
    assert not torch.equal(changed["text_ids"], b["text_ids"])
    with torch.no_grad():
        before = model.group_losses("image_text", b)["modality"]["loss"]
        after = model.group_losses("image_text", changed)["modality"]["loss"]
        assert torch.allclose(before, after, atol=1e-6), (before, after)
        # without the prefix-LM mask the same change does reach the earlier positions: the check can fail
        x = {k: b[k] for k in ("text_ids", "text_padding_mask", "pixels")}
        plain = model.backbone(x).tokens["text"][:, :j]
        plain_changed = model.backbone(dict(x, text_ids=changed["text_ids"])).tokens["text"][:, :j]
        assert not torch.allclose(plain, plain_changed, atol=1e-4)
    # and a change inside the scored tokens changes the loss
    inside = dict(b, text_ids=b["text_ids"].clone())
    inside["text_ids"][:, 2] = 101
    with torch.no_grad():
        assert not torch.allclose(model.group_losses("image_text", inside)["modality"]["loss"], before)


def test_validation_reports_matching_accuracy_of_pairs_and_triplets():
    r = get_recipe("opt")
    model = model_for(r).eval()
    b = batch_for(r, ["image_text", "triplet"], n=6)
    pair = model.evaluate("image_text", b["image_text"])
    assert pair["match_count"] == 18  # 6 positives + 2 x 6 hard negatives
    assert 0 <= float(pair["match_correct"]) <= 18
    trip = model.evaluate("triplet", b["triplet"])
    assert 0 < trip["triplet_match_count"] <= 6 and 0 <= float(trip["triplet_match_correct"]) <= 6
    assert "match_count" not in trip and "triplet_match_count" not in pair
    beit3 = model_for(get_recipe("beit3")).eval()
    assert not any(k.startswith(("match", "triplet")) for k in beit3.evaluate("image_text", b["image_text"]))
