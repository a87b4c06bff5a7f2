"""visual-tokenizer config: load-time grid/codebook mismatch errors, the encoder's shape guard, and
the stage's architecture config kept equal to the model's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import pipelines.stages  # noqa: F401  (registers the kinds)
from pipelines.config import pipeline_from_dict
from pipelines.typed import ConfigError
from pipelines.visual_tokenizer.checks import check_pipeline
from pipelines.visual_tokenizer.config import TokenizerArch

TOK = {"image_resolution": 64, "patch_size": 16, "dim": 32, "depth": 1, "heads": 2, "ffn_dim": 64,
       "decoder_depth": 1, "codebook_size": 64, "code_dim": 8}


def pipeline(shards_res=64, pretrain=None, tok=None):
    stages = {
        "corpus": {"uses": "corpus", "with": {"sources": [{"name": "t", "format": "text", "path": "x"}]}},
        "text-tokenizer": {"uses": "text-tokenizer", "needs": ["corpus"]},
        "vt": {"uses": "visual-tokenizer", "needs": ["corpus"], "with": {"tokenizer": {**TOK, **(tok or {})}}},
        "shards": {"uses": "shards", "needs": ["corpus", "text-tokenizer", "vt"],
                   "with": {"image_resolution": shards_res}},
    }
    if pretrain is not None:
        stages["pretrain"] = {"uses": "pretrain", "needs": ["shards"], "with": pretrain}
    spec = pipeline_from_dict({"name": "p", "stages": stages}, source="p.yaml", default_name="p")
    check_pipeline(spec.stages, "p.yaml")
    return spec


def test_matching_grid_passes():
    pipeline(64, pretrain={"size": "debug", "image_size": 64, "model": {"vision": {"patch_size": 16}},
                           "codebook_size": 64})


def test_shards_resolution_mismatch_is_a_config_error():
    with pytest.raises(ConfigError, match=r"p.yaml: stage 'shards': with.image_resolution: image resolution "
                                          r"224 does not match visual tokenizer 'vt'"):
        pipeline(224)


def test_model_grid_mismatch_is_a_config_error():
    # the debug size's own vision is 32px / patch 8: a 4x4 grid, not the tokenizer's 4x4 of 64px / 16
    with pytest.raises(ConfigError, match=r"stage 'pretrain'.*image resolution 32 does not match"):
        pipeline(64, pretrain={"size": "debug", "codebook_size": 64})
    with pytest.raises(ConfigError, match=r"stage 'pretrain'.*patch size 8 does not match"):
        pipeline(64, pretrain={"size": "debug", "image_size": 64, "codebook_size": 64})
    with pytest.raises(ConfigError, match=r"stage 'pretrain': with.codebook_size: 8192 does not match"):
        pipeline(64, pretrain={"size": "debug", "image_size": 64, "model": {"vision": {"patch_size": 16}}})


def test_pixel_target_pretraining_ignores_the_tokenizer():
    pipeline(64, pretrain={"size": "debug", "mim_target": "pixels"})


def test_tokenizer_own_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"stage 'vt': with.tokenizer: image_resolution 60 is not a multiple"):
        pipeline(60, tok={"image_resolution": 60})


def test_encoder_refuses_pixels_of_another_resolution():
    from model.visual_tokenizer import VQKD, VQKDConfig
    from pipelines.visual_tokenizer.encoder import TokenEncoder

    enc = TokenEncoder(VQKD(VQKDConfig(**TOK)).eval(), name="visual tokenizer 'vt'")
    assert enc(np.zeros((2, 3, 64, 64), np.uint8)).shape == (2, 16)
    assert enc(np.zeros((2, 3, 64, 64), np.uint8)).dtype == np.int16
    with pytest.raises(ValueError, match="trained at 64x64 px"):
        enc(np.zeros((2, 3, 32, 32), np.uint8))


def test_stage_arch_mirrors_the_model_config():
    from model.visual_tokenizer import VQKDConfig

    ours = {f.name: f.default for f in dataclasses.fields(TokenizerArch)}
    theirs = {f.name: f.default for f in dataclasses.fields(VQKDConfig)}
    assert ours == theirs
    VQKDConfig.from_dict(dataclasses.asdict(TokenizerArch(**TOK)))
