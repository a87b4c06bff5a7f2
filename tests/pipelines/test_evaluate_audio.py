"""Zero-shot classification of audio (spoken-word or sound classes) by the `evaluate` stage, on fixture shards
and a model pretrained here: the class prompts go through a real sentencepiece tokenizer, the figures stand
beside their chance levels (audio-text retrieval on real data: test_evaluate.py)."""

from __future__ import annotations

import io
import json
import os

import pytest

from omniway_shard_fixtures import run_pretrain, shards_manifest, write_shards

pytestmark = pytest.mark.usefixtures("local_ray")
CLASSES = ["zero", "one", "two", "three"]


def _tokenizer(root: str):
    """A committed-looking text-tokenizer output: a real sentencepiece model over the class prompts."""
    import sentencepiece as spm

    from pipelines.manifest import Manifest, describe_files, fingerprint_of

    os.makedirs(root)
    writer = io.BytesIO()
    lines = [f"the sound of {c}" for c in CLASSES] * 20
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=writer, vocab_size=40,
                                   model_type="bpe", pad_id=0, unk_id=1, bos_id=2, eos_id=3,
                                   hard_vocab_limit=False, minloglevel=2)
    with open(os.path.join(root, "text.model"), "wb") as f:
        f.write(writer.getvalue())
    files = describe_files(root)
    return Manifest(dir=root, storage_uri=os.path.dirname(root), data={
        "stage": "text-tokenizer", "kind": "text-tokenizer", "key": "fixture", "files": files,
        "extra": {"tokenizer": {"model": "text.model", "sha256": files[0]["sha256"], "vocab_size": 40}},
        "fingerprint": fingerprint_of("fixture", files)})


def test_zero_shot_classification_of_audio(tmp_path):
    import pipelines.stages  # noqa: F401 - registers the kinds
    from pipelines.execute import execute_stage
    from pipelines.manifest import Manifest
    from pipelines.registry import get_kind
    from pipelines.storage import Storage
    from pipelines.typed import from_dict, to_dict

    shards = shards_manifest(write_shards(str(tmp_path / "shards"), rows_per_group={"audio_text": 48},
                                          val_per_group={"audio_text": 24}, n_classes=4))
    store = str(tmp_path / "store")
    pre = run_pretrain(store, shards, {"recipe": "one-peace", "train": {
        "steps": 4, "micro_batch_size": 8, "num_workers": 1, "cpus_per_worker": 1, "zero_stage": 0,
        "precision": "fp32", "checkpoint_every": 4, "lr": 1e-3, "warmup_steps": 1}})
    pretrained = Manifest(dir=os.path.join(store, "t", "pretrain", "k1"), data=pre, storage_uri=store)
    config = from_dict(get_kind("evaluate").config, {"suites": [
        {"name": "sounds", "task": "zero_shot_classification", "modality": "audio", "classes": CLASSES,
         "templates": ["the sound of {}", "{}"]}]}, "evaluate")
    inputs = {"pretrain": pretrained, "shards": shards, "text-tokenizer": _tokenizer(str(tmp_path / "tok"))}
    m = execute_stage(pipeline="t", stage="evaluate", kind="evaluate", key="k", config=config,
                      config_dict=to_dict(config), inputs=inputs, storage=Storage(store))
    out = os.path.join(store, "t", "evaluate", "k")
    sounds = json.load(open(os.path.join(out, "sounds", "metrics.json")))
    assert sounds["data"]["n"] == 24 and sounds["data"]["classes"] == 4
    assert sounds["baselines"]["acc1"] == pytest.approx(0.25) and sounds["baselines"]["acc5"] == pytest.approx(1.0)
    assert 0.0 <= sounds["metrics"]["acc1"] <= 1.0 and sounds["metrics"]["acc5"] == pytest.approx(1.0)  # 4 classes
    assert m["metrics"]["sounds/acc1"] == pytest.approx(sounds["metrics"]["acc1"])
