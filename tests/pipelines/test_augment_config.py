"""Load-time checks of training-image augmentation: augmented images with visual-token MIM targets need the
visual-tokenizer stage the shards used as an input of pretrain, named in the error with file, stage and key;
nested recipe overrides change the preset key by key."""

from __future__ import annotations

import pytest

import pipelines.stages  # noqa: F401  (registers the kinds)
from pipelines.config import pipeline_from_dict
from pipelines.stages.pretrain import check_recipe
from pipelines.typed import ConfigError

TOK = {"image_resolution": 64, "patch_size": 16, "dim": 32, "depth": 1, "heads": 2, "ffn_dim": 64,
       "decoder_depth": 1, "codebook_size": 64, "code_dim": 8}


def pipeline(pretrain: dict, needs=("shards",), second_tokenizer=False):
    stages = {
        "corpus": {"uses": "corpus", "with": {"sources": [{"name": "t", "format": "text", "path": "x"}]}},
        "text-tokenizer": {"uses": "text-tokenizer", "needs": ["corpus"]},
        "vt": {"uses": "visual-tokenizer", "needs": ["corpus"], "with": {"tokenizer": TOK}},
        "shards": {"uses": "shards", "needs": ["corpus", "text-tokenizer", "vt"]},
        "pretrain": {"uses": "pretrain", "needs": list(needs), "with": pretrain},
    }
    if second_tokenizer:
        stages["vt2"] = {"uses": "visual-tokenizer", "needs": ["corpus"], "with": {"tokenizer": TOK}}
    return pipeline_from_dict({"name": "p", "stages": stages}, source="p.yaml", default_name="p")


AUGMENT = {"recipe": "opt", "recipe_overrides": {"augment": {"enabled": True}}}


def test_augmented_token_targets_need_the_visual_tokenizer_input():
    with pytest.raises(ConfigError) as info:
        pipeline(AUGMENT)
    msg = str(info.value)
    assert msg.startswith("p.yaml: stage 'pretrain': needs: with.recipe_overrides.augment.enabled") and "'vt'" in msg
    spec = pipeline(AUGMENT, needs=("shards", "vt"))  # named: loads, the key now covers the tokenizer too
    assert spec.stages["pretrain"].needs == ["shards", "vt"]
    pipeline({**AUGMENT, "mim_target": "pixels"})  # pixel targets come from the view itself
    pipeline({"recipe": "opt"})  # no augmentation: the shards' tokens, as before


def test_the_visual_tokenizer_must_be_the_shards_one():
    with pytest.raises(ConfigError, match=r"stage 'pretrain': needs: visual tokenizer 'vt2' is not the one the shards"):
        pipeline(AUGMENT, needs=("shards", "vt2"), second_tokenizer=True)


def test_augment_overrides_merge_into_the_preset_and_are_checked():
    r = check_recipe("beit3", {"augment": {"enabled": True, "hflip": 0.0}}, "p.yaml: stage 'pretrain'")
    assert r.augment.enabled and r.augment.hflip == 0.0 and r.augment.crop_scale == [0.08, 1.0]  # the rest: preset
    with pytest.raises(ConfigError, match=r"with.recipe_overrides.augment.crop_scal: unknown key"):
        check_recipe("beit3", {"augment": {"crop_scal": [0.2, 1]}}, "p.yaml: stage 'pretrain'")
    with pytest.raises(ConfigError, match=r"augment.crop_scale: expected \[min, max\]"):
        check_recipe("beit3", {"augment": {"crop_scale": [0.9, 0.2]}}, "p.yaml: stage 'pretrain'")
    with pytest.raises(ConfigError, match=r"modality_prob: a probability"):
        check_recipe("opt", {"modality_prob": 2}, "p.yaml: stage 'pretrain'")
