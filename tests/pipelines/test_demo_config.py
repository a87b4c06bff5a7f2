"""The shipped demo pipeline loads strictly, and cross-stage checks run at load time."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import load_pipeline
from pipelines.dag import topological_order
from pipelines.typed import ConfigError

DEMO = Path(__file__).resolve().parents[2] / "pipelines" / "configs" / "demo.yaml"


def test_demo_pipeline_loads(tmp_path):
    spec = load_pipeline(DEMO, workdir=str(tmp_path))
    assert topological_order(spec) == ["corpus", "text-tokenizer", "visual-tokenizer", "shards",
                                       "pretrain"]
    assert spec.ray.num_cpus == 2


def test_tokenizer_grid_mismatch_fails_at_load(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_pipeline(DEMO, ["pretrain.image_size=64"], workdir=str(tmp_path))
    assert "demo.yaml: stage 'pretrain'" in str(info.value)
    assert "image_size" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_pipeline(DEMO, ["shards.image_resolution=160"], workdir=str(tmp_path))
    assert "stage 'shards'" in str(info.value)
