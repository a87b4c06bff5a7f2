"""Load-time resolution and checks across stages: what an upstream stage fixes is taken from it, a value
that contradicts it and every model / recipe setting are checked when the pipeline loads (before Ray or
MLflow start), and the planner does all of it without importing torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import pipelines.stages  # noqa: F401  (registers the kinds)
from model.vqkd_config import VQKDConfig
from pipelines import cli
from pipelines.config import load_pipeline, pipeline_from_dict
from pipelines.dag import cache_key
from pipelines.typed import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "pipelines" / "configs" / "demo.yaml"
TOK = {"image_resolution": 64, "patch_size": 16, "dim": 32, "depth": 1, "heads": 2, "ffn_dim": 64,
       "decoder_depth": 1, "codebook_size": 64, "code_dim": 8}


def pipeline(shards=None, pretrain=None, tok=None, visual=True):
    stages = {
        "corpus": {"uses": "corpus", "with": {"sources": [{"name": "t", "format": "text", "path": "x"}]}},
        "text-tokenizer": {"uses": "text-tokenizer", "needs": ["corpus"]},
        "shards": {"uses": "shards", "needs": ["corpus", "text-tokenizer"], "with": shards or {}},
    }
    if visual:
        stages["vt"] = {"uses": "visual-tokenizer", "needs": ["corpus"], "with": {"tokenizer": {**TOK, **(tok or {})}}}
        stages["shards"]["needs"].append("vt")
    if pretrain is not None:
        stages["pretrain"] = {"uses": "pretrain", "needs": ["shards"], "with": pretrain}
    return pipeline_from_dict({"name": "p", "stages": stages}, source="p.yaml", default_name="p")


def test_upstream_values_are_filled_in():
    spec = pipeline(pretrain={"size": "debug"})
    assert spec.stages["shards"].config.image_resolution == 64
    pre = spec.stages["pretrain"].config
    assert (pre.image_size, pre.codebook_size, pre.model) == (64, 64, {"vision": {"patch_size": 16}})
    # without a visual tokenizer: the shards' default resolution, the model's own patch, no codebook
    spec = pipeline(pretrain={"size": "debug"}, visual=False)
    assert spec.stages["shards"].config.image_resolution == 224
    pre = spec.stages["pretrain"].config
    assert (pre.image_size, pre.codebook_size, pre.model) == (224, None, {})


def test_stating_the_upstream_values_again_changes_no_cache_key(tmp_path):
    # the demo states 112 px, patch 16 and codebook 256 once (the visual tokenizer); the same pipeline
    # with them written out in the shards and pretrain stages too resolves to the same configs, so the
    # same cache keys: nothing a user built before is rebuilt
    spec = load_pipeline(DEMO, workdir=str(tmp_path))
    explicit = load_pipeline(DEMO, ["shards.image_resolution=112", "pretrain.image_size=112",
                                    "pretrain.codebook_size=256", "pretrain.model={vision: {patch_size: 16}}"],
                             workdir=str(tmp_path))
    for name, stage in spec.stages.items():
        assert stage.config_dict == explicit.stages[name].config_dict, name
        assert (cache_key(stage.uses, "1", stage.config_dict, {})
                == cache_key(stage.uses, "1", explicit.stages[name].config_dict, {}))


@pytest.mark.parametrize("override, key", [
    (["shards.image_resolution=160"], "stage 'shards': with.image_resolution: 160 does not match visual tokenizer"),
    (["pretrain.image_size=64"], "stage 'pretrain': with.image_size: 64 does not match visual tokenizer"),
    (["pretrain.model={vision: {patch_size: 8}}"],
     "stage 'pretrain': with.model.vision.patch_size: 8 does not match visual tokenizer"),
    (["pretrain.codebook_size=512"], "stage 'pretrain': with.codebook_size: 512 does not match visual tokenizer"),
])
def test_values_contradicting_upstream_fail_at_load(tmp_path, override, key):
    with pytest.raises(ConfigError) as info:
        load_pipeline(DEMO, override, workdir=str(tmp_path))
    assert str(info.value).startswith("demo.yaml: ")
    assert key in str(info.value)


def test_pixel_target_pretraining_is_free_of_the_tokenizer_grid():
    spec = pipeline(pretrain={"size": "debug", "mim_target": "pixels", "image_size": 32})
    pre = spec.stages["pretrain"].config
    assert (pre.image_size, pre.codebook_size, pre.model) == (32, None, {})


@pytest.mark.parametrize("override, message", [
    ("pretrain.size=nope", "stage 'pretrain': with.size: unknown model size 'nope' (registered: base, debug"),
    ("pretrain.model={bogus: 1}", "stage 'pretrain': with.model.bogus: unknown key (known keys: dim, layers"),
    ("pretrain.model={vision: {patch_sise: 8}}", "with.model.vision.patch_sise: unknown key (known keys: img_size"),
    ("pretrain.model={layers: two}", "with.model.layers: expected an integer, got 'two'"),
    ("pretrain.model={heads: 3}", "with.model: dim 64 is not divisible by heads 3"),
    ("pretrain.model={checkpoint_activations: true}",
     "with.model.checkpoint_activations: set with.train.activation_checkpointing instead"),
    ("pretrain.model={text: {vocab_size: 100}}", "with.model.text.vocab_size: the vocabulary is the shards' text"),
    ("pretrain.recipe=beit4", "stage 'pretrain': with.recipe: unknown recipe 'beit4' (known: beit3, omni, one-peace, opt)"),
    ("pretrain.recipe_overrides={text_mask: lots}", "with.recipe_overrides.text_mask: expected a number, got 'lots'"),
    ("pretrain.recipe_overrides={txt_mask: 0.2}", "with.recipe_overrides.txt_mask: unknown key (known keys: weights"),
    ("pretrain.recipe_overrides={mix: {pairs: 1}}", "with.recipe_overrides: unknown mix groups ['pairs']"),
    ("pretrain.model={vision: {abstractor_queries: 4}}",
     "with.model.vision.abstractor_queries: the visual abstractor has no per-patch outputs, which mim and denoise"),
    ("instruct.abstractor_queries=-1", "stage 'instruct': with.abstractor_queries: must be >= 0"),
    ("evaluate.suites=[{name: x, task: captioning, data: shards}]",
     "stage 'evaluate': with.suites[0].data: 'shards' is not a `instructions` input"),
])
def test_dry_run_names_file_stage_and_key(project, override, message):
    # what a user types: the error comes before any plan is printed, Ray or MLflow started (exit 2)
    code, out, err = project.cli("run", str(DEMO), "--set", override, "--dry-run")
    assert code == 2, (out, err)
    assert "omniway: config error: demo.yaml: " in err and message in err, err
    assert out == ""
    assert not (project.workdir / "mlflow.db").exists()


def test_tokenizer_own_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"stage 'vt': with.tokenizer: image_resolution 60 is not a multiple"):
        pipeline(tok={"image_resolution": 60})
    with pytest.raises(ConfigError, match=r"stage 'vt': with.tokenizer.codebok_size: unknown key"):
        pipeline(tok={"codebok_size": 60})


def test_encoder_refuses_pixels_of_another_resolution():
    from model.visual_tokenizer import VQKD
    from pipelines.visual_tokenizer.encoder import TokenEncoder

    enc = TokenEncoder(VQKD(VQKDConfig(**TOK)).eval(), name="visual tokenizer 'vt'")
    assert enc(np.zeros((2, 3, 64, 64), np.uint8)).shape == (2, 16)
    assert enc(np.zeros((2, 3, 64, 64), np.uint8)).dtype == np.int16
    with pytest.raises(ValueError, match="trained at 64x64 px"):
        enc(np.zeros((2, 3, 32, 32), np.uint8))


def test_the_planner_checks_model_settings_without_torch(tmp_path):
    # the planner imports every stage module and checks the model and recipe settings on every run,
    # cached ones included: none of it may import torch; the classes it loads are the model's own
    script = textwrap.dedent(f"""
        import sys
        from pipelines.config import load_pipeline
        from pipelines.typed import ConfigError
        spec = load_pipeline({str(DEMO)!r}, workdir=sys.argv[1])
        try:
            load_pipeline({str(DEMO)!r}, ["pretrain.model={{vision: {{patch_sise: 8}}}}"], workdir=sys.argv[1])
        except ConfigError as e:
            assert "with.model.vision.patch_sise" in str(e), e
        else:
            raise AssertionError("no error")
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "ray", "mlflow", "deepspeed"))
        assert not heavy, heavy
        from model.visual_tokenizer import VQKDConfig
        assert type(spec.stages["visual-tokenizer"].config.tokenizer) is VQKDConfig
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
