"""The `instruct` stage on a real embedded Ray, DeepSpeed on CPU: 2 workers with ZeRO-2 and ZeRO-3 over
batches mixing text-only, image and audio conversations; the answer loss goes down while the frozen parts
do not change; the exported model and head generate."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from omniway_shard_fixtures import run_pretrain, shards_manifest, write_instructions, write_shards
from pipelines.manifest import Manifest

TRAIN = {"micro_batch_size": 6, "num_workers": 2, "cpus_per_worker": 0.5, "log_every": 1, "warmup_steps": 2,
         "precision": "fp32"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, local_ray_module):
    root = tmp_path_factory.mktemp("instruct")
    shards = shards_manifest(write_shards(str(root / "shards"), rows_per_group={"text": 24, "image_text": 24,
                                                                                "audio_text": 24}))
    store = str(root / "store")
    pre = run_pretrain(store, shards, {"recipe": "beit3", "codebook_size": 64,
                                       "train": {**TRAIN, "steps": 4, "checkpoint_every": 4, "lr": 1e-3}})
    pretrained = Manifest(dir=os.path.join(store, "t", "pretrain", "k1"), data=pre, storage_uri=store)
    data = shards_manifest(write_instructions(str(root / "instr"), rows_per_group={
        "text": 24, "image_text": 24, "audio_text": 24}), stage="instructions")
    return store, pretrained, data


def run_instruct(store, pretrained, data, config: dict, key: str) -> dict:
    from pipelines.execute import execute_stage
    from pipelines.registry import get_kind
    from pipelines.storage import Storage
    from pipelines.typed import from_dict, to_dict

    cfg = from_dict(get_kind("instruct").config, config, "instruct")
    return execute_stage(pipeline="t", stage="instruct", kind="instruct", key=key, config=cfg, config_dict=to_dict(cfg),
                         inputs={"instructions": data, "pretrain": pretrained}, storage=Storage(store))


def initial_val_loss(pretrained, data, trainable) -> float:
    """The answer loss of the pretrained model and a fresh LM head on the val rows, before any step."""
    from pipelines.train.instruct_task import InstructTask
    from pipelines.stages.instruct import InstructConfig
    from pipelines.train.config import TrainConfig

    task = InstructTask(InstructConfig(trainable=trainable, train=TrainConfig(**TRAIN)), data, pretrained)
    task.check()
    model = task.build_model(task.cfg.train).eval()
    total = count = 0.0
    for name, ds in task.datasets().items():
        if not name.startswith("val-"):
            continue
        group = name[len("val-"):]
        for batch in ds.iter_batches(batch_size=64, batch_format="numpy"):
            t = task.collate(group, batch)
            with torch.no_grad():
                r = model.group_loss(group, t)
            total += float(r["loss"]) * float(r["count"])
            count += float(r["count"])
    return total / count


@pytest.mark.parametrize("zero, trainable", [(2, "language"), (3, "text")])
def test_answer_loss_falls_and_frozen_parts_stay(inputs, zero, trainable):
    store, pretrained, data = inputs
    extra = {"zero3_persistence_threshold": 0} if zero == 3 else {}
    before = initial_val_loss(pretrained, data, trainable)
    m = run_instruct(store, pretrained, data, {"trainable": trainable, "val_samples": 3, "train": {
        **TRAIN, "steps": 30, "checkpoint_every": 30, "lr": 3e-3, "zero_stage": zero, **extra}}, f"z{zero}")
    after = m["metrics"]["val/loss"]
    assert after < 0.6 * before, (before, after)
    assert m["metrics"]["val/perplexity"] > 1.0 and m["extra"]["stream_batch_sizes"] == {
        "text": 2, "image_text": 2, "audio_text": 2}
    out = os.path.join(store, "t", "instruct", f"z{zero}")
    old = load_file(os.path.join(pretrained.dir, "model.safetensors"))
    new = load_file(os.path.join(out, "model.safetensors"))
    assert old.keys() == new.keys()
    from tasks.instruct import trains

    changed = {k for k in old if not torch.equal(old[k], new[k])}
    frozen = {k for k in old if not trains(f"backbone.{k}", trainable)}
    assert frozen and not (changed & frozen), sorted(changed & frozen)[:5]
    assert changed, "nothing trained"
    if trainable == "language":
        assert any(k.startswith("adapters.vision.") for k in frozen) and any(".audio." in k for k in frozen)
    else:  # only text experts and the head: the shared attention of the `all`... any non-text part stays
        assert all("text" in k.split(".") or k.startswith("adapters.text.") for k in changed)
    head = load_file(os.path.join(out, "lm_head.safetensors"))
    assert {k.split(".")[0] for k in head} == {"head"}
    samples = [json.loads(line) for line in open(os.path.join(out, "val_samples.jsonl"))]
    assert len(samples) == 3 and all(s["generated"] and s["reference"] for s in samples)


def test_instruct_refuses_a_model_of_another_vocabulary(inputs, tmp_path):
    from pipelines.train.instruct_task import InstructionsError

    store, pretrained, data = inputs
    data.data["extra"]["tokenizers"]["text"] = {**data.extra["tokenizers"]["text"], "vocab_size": 999}
    try:
        with pytest.raises(InstructionsError, match="999-piece vocabulary"):
            run_instruct(store, pretrained, data, {"train": {**TRAIN, "steps": 2}}, "bad")
    finally:
        data.data["extra"]["tokenizers"]["text"]["vocab_size"] = 512


def test_resume_matches_an_uninterrupted_run(inputs, tmp_path):
    """8 steps straight vs 4 steps, stop, rerun under the same name: steps 5-8 have the same answer losses
    (abs 1e-4), as pretraining's resume does (same seeds, same data positions)."""
    from omniway_tracking import losses, tracking
    from pipelines.stages.instruct import InstructConfig
    from pipelines.train.instruct_task import InstructTask
    from pipelines.train.launch import fit
    from pipelines.typed import from_dict

    _, pretrained, data = inputs

    def run(name, storage, uri_run, **kw):
        cfg = from_dict(InstructConfig, {"trainable": "all", "val_samples": 0, "train": {
            **TRAIN, "steps": 8, "checkpoint_every": 4, "lr": 3e-3, **kw}}, "instruct")
        return fit(InstructTask(cfg, data, pretrained), cfg.train, name=name, storage_path=storage,
                   tracking_uri=uri_run[0], run_id=uri_run[1])

    straight = tracking(tmp_path)
    run("straight", str(tmp_path / "a"), straight)
    first, second = tracking(tmp_path), tracking(tmp_path)
    assert run("resumed", str(tmp_path / "b"), first, stop_after=4).metrics["step"] == 4
    r2 = run("resumed", str(tmp_path / "b"), second)
    assert r2.metrics["step"] == 8 and r2.metrics["restarts"] == 1
    a, b1, b2 = losses(*straight), losses(*first), losses(*second)
    assert sorted(b1) == [1, 2, 3, 4] and sorted(b2) == [5, 6, 7, 8]
    for step in range(1, 9):
        got = b1.get(step, b2.get(step))
        assert abs(got - a[step]) < 1e-4, (step, got, a[step])


def test_an_abstractor_added_at_instruction_tuning_trains_and_generates(inputs):
    """mPLUG-Owl2's recipe: the vision adapter frozen, a new visual abstractor trained with the language model;
    the exported model holds it and encodes images through it."""
    store, pretrained, data = inputs
    m = run_instruct(store, pretrained, data, {"trainable": "language", "abstractor_queries": 2, "val_samples": 1,
                                               "train": {**TRAIN, "steps": 4, "checkpoint_every": 4, "lr": 3e-3}},
                     "abstractor")
    assert m["extra"]["model_config"]["vision"]["abstractor_queries"] == 2
    out = os.path.join(store, "t", "instruct", "abstractor")
    old = load_file(os.path.join(pretrained.dir, "model.safetensors"))
    new = load_file(os.path.join(out, "model.safetensors"))
    added = set(new) - set(old)
    assert added and all(k.startswith("adapters.vision.abstractor.") for k in added) and set(old) <= set(new)
    assert all(torch.equal(old[k], new[k]) for k in old if k.startswith("adapters.vision.stem."))
    from model import load_checkpoint

    backbone = load_checkpoint(os.path.join(out, "model.safetensors")).eval()
    with torch.no_grad():
        hidden = backbone({"pixels": torch.randn(1, 3, 32, 32), "text_ids": torch.tensor([[2, 7, 8, 9]])}).hidden
    assert hidden.shape[1] == 1 + 2 + 4  # CLS + the 2 abstracted image tokens + the text
