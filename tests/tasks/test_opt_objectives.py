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
