"""The shipped demo pipeline loads strictly (cross-stage checks: test_config_resolve.py)."""

from __future__ import annotations

from pathlib import Path

from pipelines.config import load_pipeline
from pipelines.dag import topological_order

DEMO = Path(__file__).resolve().parents[2] / "pipelines" / "configs" / "demo.yaml"


def test_demo_pipeline_loads(tmp_path):
    spec = load_pipeline(DEMO, workdir=str(tmp_path))
    assert topological_order(spec) == ["corpus", "text-tokenizer", "visual-tokenizer", "shards",
                                       "pretrain", "instructions", "instruct", "evaluate"]
    # what the upstream stages fix reached the instruction data
    assert spec.stages["instructions"].config.image_resolution == 112
    assert spec.ray.num_cpus == 2
    # the evaluate stage's suites named their data inputs at load (embedding: shards; generation: instructions)
    data = {s.name: s.data for s in spec.stages["evaluate"].config.suites}
    assert data["digits-zero-shot"] == "shards" and data["easy-vqa"] == "instructions"
