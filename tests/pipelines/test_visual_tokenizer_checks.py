"""visual-tokenizer config: load-time grid/codebook mismatch errors, the encoder's shape guard, and
the stage's architecture config being the model's own (loaded without torch)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

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


def test_stage_arch_is_the_model_config():
    # one definition: the stage's `with.tokenizer` class is the model's VQKDConfig itself
    from model.visual_tokenizer import VQKD, VQKDConfig

    assert TokenizerArch is VQKDConfig
    arch = TokenizerArch(**TOK)
    assert VQKD(arch).config.grid == 4  # the stage's config object builds the model as is


def test_stage_config_loads_without_torch():
    # the planner imports the stage configs on every run; the architecture must not pull in torch,
    # and the class loaded light must be the one `model` later uses (whatever the import order)
    script = textwrap.dedent("""
        import sys
        import pipelines.stages  # noqa: F401  (registers every kind, the visual tokenizer's too)
        from pipelines.visual_tokenizer.config import TokenizerArch, VisualTokenizerConfig
        assert "torch" not in sys.modules and "model" not in sys.modules, sorted(
            m for m in sys.modules if m.split(".")[0] in ("torch", "model"))
        VisualTokenizerConfig(tokenizer=TokenizerArch(image_resolution=64, patch_size=16))
        from model.visual_tokenizer import VQKDConfig
        assert VQKDConfig is TokenizerArch
        print("ok")
    """)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
