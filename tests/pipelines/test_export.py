"""`omniway export`: pretrain stage outputs (written by ``PretrainTask.export``) -> omniway / BEiT-3 files."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch

from model import ModelConfig, load_checkpoint
from pipelines import cli
from pipelines.config import load_pipeline
from pipelines.dag import key_for, topological_order
from pipelines.registry import stage_kind
from pipelines.runner import _stage_task
from pipelines.stages.pretrain import PretrainConfig
from pipelines.storage import Storage
from pipelines.train.pretrain_task import PretrainTask
from tasks import PretrainModel
from tiny_beit3 import DIM, FFN, HEADS, IMG, LAYERS, MAXPOS, PATCH, VOCAB, tiny_inputs, torchscale_beit3_classes


def _model_overrides(**kw) -> dict:
    return {"dim": DIM, "layers": LAYERS, "heads": HEADS, "ffn_dim": FFN, "modalities": ["vision", "text"],
            "vision": {"img_size": IMG, "patch_size": PATCH}, "text": {"vocab_size": VOCAB, "max_positions": MAXPOS},
            **kw}


def _trained(seed: int = 0, **model_kw) -> tuple[PretrainTask, PretrainModel]:
    """A PretrainTask as its check() leaves it and a PretrainModel with every parameter random (LN gains and
    biases included: an identity LN would hide a swapped or missing norm in the parity check)."""
    cfg = PretrainConfig(size="debug", model=_model_overrides(**model_kw), recipe="beit3", mim_target="pixels")
    task = PretrainTask(cfg, shards=None)
    task.model_config = ModelConfig.from_size(cfg.size, **cfg.model).to_dict()
    task.sizes = {"image_text": 2}
    module = PretrainModel(ModelConfig.from_dict(task.model_config), task.recipe(), mim_target="pixels")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return task, module.eval()


@dataclass
class TinyPretrainConfig:
    seed: int = 0
    modalities: list[str] = field(default_factory=lambda: ["vision", "text"])


@stage_kind("test-tiny-pretrain", config=TinyPretrainConfig, version="1",
            description="The pretrain stage's output step (PretrainTask.export) without the training.")
def tiny_pretrain(ctx):
    task, module = _trained(ctx.config.seed, modalities=ctx.config.modalities)
    files = task.export(module, ctx.output_dir)
    ctx.extra.update({"model_config": task.model_config, "files": files})
    return {"step": 0.0}


def _export(*argv: str, capsys) -> tuple[int, str, str]:
    code = cli.main(["export", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def torchscale():
    """torchscale's (EncoderConfig, BEiT3)."""
    with torchscale_beit3_classes() as classes:
        yield classes


def test_export_beit3_loads_strictly_into_torchscale_with_the_same_outputs(tmp_path, capsys, torchscale):
    EncoderConfig, BEiT3 = torchscale
    task, module = _trained()
    stage_out = tmp_path / "stage"
    stage_out.mkdir()
    task.export(module, str(stage_out))

    dest = tmp_path / "beit3" / "beit3_tiny.pt"
    code, out, err = _export(str(stage_out), "--format", "beit3", "--out", str(dest), capsys=capsys)
    assert code == 0, err
    assert str(dest) in out

    ckpt = torch.load(dest, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"model"} and all(k.startswith("beit3.") for k in ckpt["model"])
    args = json.loads(dest.with_suffix(".json").read_text())["torchscale_encoder_config"]
    ref = BEiT3(EncoderConfig(**args)).eval()
    ref.load_state_dict({k[len("beit3."):]: v for k, v in ckpt["model"].items()}, strict=True)

    pixels, ids, pad = tiny_inputs()
    with torch.no_grad():
        expected = ref(textual_tokens=ids, visual_tokens=pixels, text_padding_position=pad)["encoder_out"]
        got = module.backbone({"pixels": pixels, "text_ids": ids, "text_padding_mask": pad}).hidden
        expected_text = ref(textual_tokens=ids, text_padding_position=pad)["encoder_out"]
        got_text = module.backbone({"text_ids": ids, "text_padding_mask": pad}).hidden
    # outputs are O(1) after the final LN; a mapping slip moves them by O(0.1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_text, expected_text, atol=1e-5, rtol=0)


def test_export_omniway_writes_loadable_backbone_heads_and_config(tmp_path, capsys):
    task, module = _trained(seed=3)
    stage_out = tmp_path / "stage"
    stage_out.mkdir()
    task.export(module, str(stage_out))

    dest = tmp_path / "omniway"
    code, _, err = _export(str(stage_out), "--out", str(dest), capsys=capsys)  # omniway is the default
    assert code == 0, err
    backbone = load_checkpoint(dest / "model.safetensors")  # builds from the embedded config, strict
    for k, v in module.backbone.state_dict().items():
        assert torch.equal(backbone.state_dict()[k], v), k
    assert ModelConfig.from_dict(json.loads((dest / "config.json").read_text())) == module.backbone.config
    from safetensors.torch import load_file

    heads = load_file(dest / "heads.safetensors")
    assert set(heads) == {k for k in module.state_dict() if not k.startswith("backbone.")}
    assert {"mlm.head.dense.weight", "mim.head.proj.weight"} <= set(heads)
    assert json.loads((dest / "pretrain.json").read_text())["mim_target"] == "pixels"


@pytest.mark.parametrize("model_kw, reason", [
    ({"modalities": ["audio"]}, "needs vision and text"),
    ({"fusion_layers": 1}, "fusion_layers=1"),
    ({"layer_scale": 0.1}, "layer_scale"),
])
def test_export_beit3_refuses_models_it_cannot_map(tmp_path, capsys, model_kw, reason):
    task, module = _trained(**model_kw)
    task.export(module, str(tmp_path))
    dest = tmp_path / "out.pt"
    code, _, err = _export(str(tmp_path), "--format", "beit3", "--out", str(dest), capsys=capsys)
    assert code == 1
    assert "cannot be written as a torchscale BEiT-3 checkpoint" in err and reason in err
    assert not dest.exists()


def test_export_beit3_of_a_model_with_audio_says_what_it_leaves_out(tmp_path, capsys):
    task, module = _trained(modalities=["vision", "text", "audio"])
    task.export(module, str(tmp_path))
    code, out, err = _export(str(tmp_path), "--format", "beit3", "--out", str(tmp_path / "b.pt"), capsys=capsys)
    assert code == 0, err
    assert "note: modalities audio:" in out
    keys = torch.load(tmp_path / "b.pt", weights_only=True)["model"]
    assert not any("audio" in k for k in keys)


def _pipeline(project, seed: int) -> str:
    return str(project.write({
        "name": "exp", "plugins": ["omniway_test_kinds"],
        "stages": {"data": {"uses": "test-emit", "with": {"text": "x"}},
                   "pretrain": {"uses": "test-tiny-pretrain", "needs": ["data"], "with": {"seed": seed}}},
    }))


def _run(pipeline: str, workdir: str, storage: str | None = None) -> dict[str, dict]:
    """What `omniway run` does for each stage, without Ray: the runner's own stage-task body, in order,
    with each key computed from the committed inputs' fingerprints."""
    spec = load_pipeline(pipeline, workdir=workdir, storage=storage)
    storage = Storage(spec.storage)
    manifests: dict[str, dict] = {}
    for name in topological_order(spec):
        stage = spec.stages[name]
        key = key_for(spec, name, {n: manifests[n]["fingerprint"] for n in stage.needs})
        manifests[name] = _stage_task(
            plugins=spec.plugins, pipeline=spec.name, stage=name, kind=stage.uses, key=key,
            config_dict=stage.config_dict, storage_root=storage.uri_root if not storage.local else storage.root,
            run_id=None, tracking_uri=None,
            inputs={n: (storage.output_dir(spec.name, n, manifests[n]["key"]), manifests[n]) for n in stage.needs})
    return manifests


def test_export_stage_resolves_the_current_output_of_a_pipeline(project, capsys):
    pipeline, workdir = _pipeline(project, seed=5), str(project.workdir)
    dest = project.root / "out"

    code, _, err = _export(pipeline, "--stage", "pretrain", "--workdir", workdir, "--out", str(dest), capsys=capsys)
    assert code == 1 and "has no output for its current config" in err and "--to pretrain" in err

    manifests = _run(pipeline, workdir)
    code, out, err = _export(pipeline, "--stage", "pretrain", "--workdir", workdir, "--out", str(dest),
                             capsys=capsys)
    assert code == 0, err
    committed = project.storage / "exp" / "pretrain" / manifests["pretrain"]["key"]
    assert str(committed) in out
    _, module = _trained(seed=5)
    got = load_checkpoint(dest / "model.safetensors").state_dict()
    assert all(torch.equal(got[k], v) for k, v in module.backbone.state_dict().items())

    # a changed config is a different key: that output does not exist yet, and the old one is pointed at
    code, _, err = _export(pipeline, "--stage", "pretrain", "--set", "pretrain.seed=6", "--workdir", workdir,
                           "--out", str(dest), capsys=capsys)
    assert code == 1 and "has no output for its current config" in err and manifests["pretrain"]["key"] in err

    # the manifest's hashes guard the files: a modified output is not exported
    with open(committed / "heads.safetensors", "ab") as f:
        f.write(b"\0")
    code, _, err = _export(pipeline, "--stage", "pretrain", "--workdir", workdir, "--out", str(dest), capsys=capsys)
    assert code == 1 and "heads.safetensors does not match the sha256" in err


def test_export_stage_from_uri_storage(project, capsys, torchscale):
    # a pyarrow.fs URI (what s3:// / gs:// storage goes through); the files are fetched to a temporary dir
    pipeline, workdir = _pipeline(project, seed=7), str(project.workdir)
    uri = f"file://{project.root / 'remote'}"
    _run(pipeline, workdir, storage=uri)
    dest = project.root / "b.pt"
    code, _, err = _export(pipeline, "--stage", "pretrain", "--workdir", workdir, "--storage", uri,
                           "--format", "beit3", "--out", str(dest), capsys=capsys)
    assert code == 0, err
    _, module = _trained(seed=7)
    EncoderConfig, BEiT3 = torchscale
    ref = BEiT3(EncoderConfig(**json.loads(dest.with_suffix(".json").read_text())["torchscale_encoder_config"]))
    ref.load_state_dict({k[len("beit3."):]: v for k, v in torch.load(dest, weights_only=True)["model"].items()},
                        strict=True)
    assert torch.equal(ref.text_embed.weight, module.backbone.text_embedding.weight)


def test_export_stage_needs_a_pipeline_file_and_a_known_stage(project, capsys):
    pipeline = _pipeline(project, seed=0)
    code, _, err = _export(pipeline, "--out", "x", capsys=capsys)
    assert code == 1 and "--stage NAME" in err
    code, _, err = _export(pipeline, "--stage", "nope", "--workdir", str(project.workdir), "--out", "x",
                           capsys=capsys)
    assert code == 2 and "no stage named 'nope'" in err
    code, _, err = _export(str(project.root / "missing"), "--out", "x", capsys=capsys)
    assert code == 1 and "no such directory" in err
