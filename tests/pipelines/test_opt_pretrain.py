"""The `opt` recipe (MLM, MIM, masked audio, OPT's modality level, matching) through the pretrain stage on a
real embedded Ray, 2 workers, DeepSpeed ZeRO-2, MLflow sqlite; with augmented images whose visual-token
targets the workers compute with the visual-tokenizer input; validation reports the matching accuracies."""

from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient

from omniway_shard_fixtures import shards_manifest, write_shards
from omniway_tracking import losses, tracking
from omniway_visual_tokenizer_fixture import write_visual_tokenizer

ROWS = {"text": 24, "image": 24, "image_text": 48, "audio_text": 24, "triplet": 48}
MIX = {"text": 1, "image": 1, "image_text": 2, "audio_text": 1, "triplet": 3}  # 8 per worker: 3 triplets


@pytest.mark.usefixtures("local_ray")
def test_opt_recipe_two_workers_zero2_with_augmentation_loss_goes_down(tmp_path):
    import pipelines.stages  # noqa: F401 - registers the kinds
    from pipelines.execute import execute_stage
    from pipelines.registry import get_kind
    from pipelines.storage import Storage
    from pipelines.typed import from_dict, to_dict

    shards = shards_manifest(write_shards(str(tmp_path / "shards"), rows_per_group=ROWS))
    visual = write_visual_tokenizer(str(tmp_path / "vqkd"))
    steps = 30
    config = {"recipe": "opt", "codebook_size": 64,
              "recipe_overrides": {"mix": MIX, "augment": {"enabled": True, "crop_scale": [0.5, 1.0]}},
              "train": {"steps": steps, "micro_batch_size": 8, "num_workers": 2, "cpus_per_worker": 0.5,
                        "zero_stage": 2, "log_every": 1, "checkpoint_every": steps, "warmup_steps": 3,
                        "lr": 3e-3, "precision": "fp32"}}
    cfg = from_dict(get_kind("pretrain").config, config, "pretrain")
    uri, run_id = tracking(tmp_path)
    m = execute_stage(pipeline="t", stage="pretrain", kind="pretrain", key="k1", config=cfg,
                      config_dict=to_dict(cfg), inputs={"shards": shards, "visual-tokenizer": visual},
                      storage=Storage(str(tmp_path / "store")), run_id=run_id, tracking_uri=uri)
    assert m["metrics"]["step"] == steps and m["extra"]["mim_target"] == "tokens"
    assert m["extra"]["stream_batch_sizes"] == {"text": 1, "image": 1, "image_text": 2, "audio_text": 1, "triplet": 3}
    curve = losses(uri, run_id)
    assert sorted(curve) == list(range(1, steps + 1))
    first, last = sum(curve[s] for s in (1, 2, 3)) / 3, sum(curve[s] for s in range(steps - 2, steps + 1)) / 3
    assert last < 0.85 * first, curve
    keys = set(MlflowClient(uri).get_run(run_id).data.metrics)
    for k in ("mlm", "mim", "mam", "modality", "match", "modality/image_text", "modality/triplet",
              "match/image_text", "match/audio_text", "match/triplet", "mim/triplet", "data_wait_share"):
        assert k in keys, k
    for k in ("modality", "match", "mim"):  # every new part finite at every step
        assert all(math.isfinite(v) for v in losses(uri, run_id, k).values()), k
    # validation (at the end): the matching heads on the val pairs with their hard negatives, and on the
    # val triplets in the five match states
    for k in ("val/match_acc", "val/triplet_match_acc"):
        assert k in keys and 0.0 <= m["metrics"][k] <= 1.0, (k, m["metrics"].get(k))
