"""The `evaluate` stage scoring a torchscale / unilm BEiT-3 checkpoint file instead of a model stage (published
weights): loaded through model.interop.beit3, its embeddings are the omniway model's own, and a linear probe
on fixture shards beats the majority class."""

from __future__ import annotations

import os

import pytest
import torch

from omniway_shard_fixtures import shards_manifest, write_shards
from tiny_beit3 import DIM, FFN, HEADS, LAYERS, MAXPOS, VOCAB

pytestmark = pytest.mark.usefixtures("local_ray")


def _beit3_file(path: str):
    """A random vision+text omniway model saved in unilm's BEiT-3 layout; returns the model."""
    from model import ModelConfig
    from model.interop.beit3 import omniway_to_beit3

    config = ModelConfig.from_size("debug", dim=DIM, layers=LAYERS, heads=HEADS, ffn_dim=FFN,
                                   modalities=["vision", "text"], vision={"img_size": 32, "patch_size": 8},
                                   text={"vocab_size": VOCAB, "max_positions": MAXPOS})
    torch.manual_seed(0)
    model = config.build().eval()
    torch.save({"model": omniway_to_beit3(model.state_dict(), config)}, path)
    return model


def test_checkpoint_embeddings_are_the_models_own(tmp_path):
    from pipelines.evaluation.models import EmbeddingModel

    model = _beit3_file(str(tmp_path / "beit3.pth"))
    loaded = EmbeddingModel({"kind": "checkpoint", "path": str(tmp_path / "beit3.pth"), "heads": HEADS})
    assert loaded.contrast is None and loaded.embed_dim == DIM
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = torch.nn.functional.normalize(model({"pixels": pixels}).pooled["vision"], dim=-1)
    got = loaded.embed({"pixels": pixels}, "image")
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(got.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_linear_probe_of_a_checkpoint(tmp_path):
    import json

    import pipelines.stages  # noqa: F401 - registers the kinds
    from pipelines.execute import execute_stage
    from pipelines.registry import get_kind
    from pipelines.storage import Storage
    from pipelines.typed import from_dict, to_dict

    _beit3_file(str(tmp_path / "beit3.pth"))
    shards = shards_manifest(write_shards(str(tmp_path / "shards"), rows_per_group={"image_text": 96},
                                          val_per_group={"image_text": 48}))
    config = from_dict(get_kind("evaluate").config, {
        "checkpoint": {"path": str(tmp_path / "beit3.pth"), "heads": HEADS},
        "suites": [{"name": "probe", "task": "linear_probe", "data": "shards", "modality": "image"}]}, "evaluate")
    store = str(tmp_path / "store")
    m = execute_stage(pipeline="t", stage="evaluate", kind="evaluate", key="k", config=config,
                      config_dict=to_dict(config), inputs={"shards": shards}, storage=Storage(store))
    out = os.path.join(store, "t", "evaluate", "k")
    result = json.load(open(os.path.join(out, "probe", "metrics.json")))
    assert result["model"] == {"kind": "checkpoint", "path": str(tmp_path / "beit3.pth")}
    assert result["data"]["n"] == 48 and result["data"]["train_n"] == 96
    # the fixture's images carry their class in colour and a band: random features keep it
    assert result["metrics"]["acc1"] > result["baselines"]["acc1"] + 0.2
    assert m["metrics"]["probe/acc1"] == pytest.approx(result["metrics"]["acc1"])
    assert os.path.exists(os.path.join(out, "report.html"))


class _RunsCode:
    """Unpickling this calls ``open(marker, "w")``: what a malicious checkpoint would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    from pipelines.evaluation.models import EmbeddingModel

    marker = tmp_path / "ran"
    bad = tmp_path / "evil.pth"
    torch.save({"model": {"x": _RunsCode(str(marker))}}, str(bad))
    with pytest.raises(ValueError, match="not a weights-only checkpoint"):
        EmbeddingModel({"kind": "checkpoint", "path": str(bad), "heads": HEADS})
    assert not marker.exists()
