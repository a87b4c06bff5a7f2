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
