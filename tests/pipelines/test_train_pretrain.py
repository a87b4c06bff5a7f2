"""The pretrain stage and the one training loop on a real embedded Ray, DeepSpeed on CPU, MLflow sqlite:
2 workers with ZeRO-2, ZeRO-3 and ZeRO-2 + optimizer offload, 1 worker, resume equivalence, a forced rerun, bad
shards (a killed worker: test_train_faults.py)."""

from __future__ import annotations

import glob
import json
import math
import os

import pytest
from mlflow.tracking import MlflowClient

from omniway_shard_fixtures import run_pretrain, shards_manifest, write_shards
from omniway_tracking import losses, tracking

GROUPS = {"text": 32, "image": 32, "image_text": 32}


def train_cfg(**kw) -> dict:
    base = {"steps": 40, "micro_batch_size": 6, "num_workers": 2, "cpus_per_worker": 0.5, "zero_stage": 2,
            "log_every": 1, "checkpoint_every": 20, "warmup_steps": 4, "lr": 3e-3, "precision": "fp32"}
    return {**base, **kw}


@pytest.fixture
def shards(tmp_path):
    return shards_manifest(write_shards(str(tmp_path / "shards"), rows_per_group=GROUPS))


def exported_shapes(path: str) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


@pytest.mark.usefixtures("local_ray")
# ZeRO-3 with zero3_persistence_threshold 0: every parameter of the debug model is partitioned (by default
# DeepSpeed keeps parameters under 1e5 elements whole, i.e. all of this model, from the second step on),
# so the backward gathers and the export's gather are really exercised.
@pytest.mark.parametrize("zero", [2, 3])
def test_two_workers_loss_goes_down_and_output_is_complete(tmp_path, shards, zero):
    from model import ModelConfig, load_checkpoint
    from tasks import PretrainModel, get_recipe

    uri, run_id = tracking(tmp_path)
    extra = {"zero3_persistence_threshold": 0} if zero == 3 else {}
    m = run_pretrain(str(tmp_path / "store"), shards, {"recipe": "beit3", "codebook_size": 64,
                                                       "train": train_cfg(zero_stage=zero, **extra)},
                     tracking=(uri, run_id))
    curve = losses(uri, run_id)
    assert sorted(curve) == list(range(1, 41))
    first, last = sum(curve[s] for s in (1, 2, 3)) / 3, sum(curve[s] for s in (38, 39, 40)) / 3
    assert last < 0.85 * first, curve
    # every metric the issue asks for reached the stage's MLflow run from rank 0
    keys = set(MlflowClient(uri).get_run(run_id).data.metrics)
    for k in ("mlm", "mim", "mlm/text", "mim/image_text", "lr", "grad_norm", "tokens_per_s", "samples_per_s",
              "mfu", "data_wait_share", "memory/rank0_peak_bytes", "memory/rank1_peak_bytes", "mix/image_text",
              "val/mlm_acc", "val/image_to_text/r_at_1", "val/text_to_image/r_at_5"):
        assert k in keys, k
    # ... with values that can be right: finite and in range at every step they were logged
    mfu, norms = losses(uri, run_id, "mfu"), losses(uri, run_id, "grad_norm")
    assert sorted(mfu) == sorted(norms) == list(range(1, 41))
    assert all(math.isfinite(v) and 0 < v <= 1 for v in mfu.values()), mfu
    assert all(math.isfinite(v) and v > 0 for v in norms.values()), norms
    for direction in ("image_to_text", "text_to_image"):
        r1, r5 = (losses(uri, run_id, f"val/{direction}/r_at_{k}") for k in (1, 5))
        assert sorted(r1) == sorted(r5) == [40], (r1, r5)  # validated at the end
        assert 0 <= r1[40] <= r5[40] <= 1, (direction, r1, r5)
    assert 0 <= losses(uri, run_id, "val/mlm_acc")[40] <= 1
    files = {f["path"] for f in m["files"]}
    assert {"model.safetensors", "heads.safetensors", "pretrain.json", "loss_curve.png"} <= files
    out = os.path.join(str(tmp_path / "store"), "t", "pretrain", "k1")
    model = load_checkpoint(os.path.join(out, "model.safetensors"))
    assert model.config.dim == 64
    assert m["metrics"]["step"] == 40 and m["extra"]["stream_batch_sizes"] == {"text": 2, "image": 2, "image_text": 2}
    # the export holds whole fp32 tensors: under ZeRO-3 a parameter read without gathering is an empty
    # (0,) shard, so every tensor must have the shape of a freshly built model's
    with open(os.path.join(out, "pretrain.json")) as f:
        meta = json.load(f)
    config = ModelConfig.from_dict(meta["model_config"])
    fresh = PretrainModel(config, get_recipe("beit3"), mim_target=meta["mim_target"], codebook_size=64)
    want = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    assert exported_shapes(os.path.join(out, "model.safetensors")) == {
        k[len("backbone."):]: v for k, v in want.items() if k.startswith("backbone.")}
    assert exported_shapes(os.path.join(out, "heads.safetensors")) == {
        k: v for k, v in want.items() if not k.startswith("backbone.")}


@pytest.mark.usefixtures("local_ray")
def test_optimizer_offload_two_workers_loss_goes_down(tmp_path, shards):
    """ZeRO-2 with the optimizer states and step on CPU (torch's fused AdamW on the fp32 partitions;
    nothing JIT-compiled). On a CPU-only machine the offload moves no memory, but DeepSpeed runs its
    offload code path (CPU fp32 partitions, gradients copied to them, the client optimizer stepped there)."""
    import torch

    from pipelines.stages.pretrain import PretrainConfig
    from pipelines.train.launch import fit
    from pipelines.train.pretrain_task import PretrainTask
    from pipelines.typed import from_dict

    uri, run_id = tracking(tmp_path)
    cfg = from_dict(PretrainConfig, {"recipe": "beit3", "codebook_size": 64, "train": train_cfg(
        steps=20, checkpoint_every=20, warmup_steps=2, offload_optimizer=True)}, "pretrain")
    result = fit(PretrainTask(cfg, shards), cfg.train, name="offload", storage_path=str(tmp_path / "train"),
                 tracking_uri=uri, run_id=run_id)
    assert result.metrics["step"] == 20
    curve = losses(uri, run_id)
    assert sorted(curve) == list(range(1, 21))
    first, last = sum(curve[s] for s in (1, 2, 3)) / 3, sum(curve[s] for s in (18, 19, 20)) / 3
    assert last < 0.9 * first, curve
    # the run really was configured with offload (DeepSpeed saves its config with the engine state)
    with result.checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, "state", "mp_rank_00_model_states.pt"), map_location="cpu",
                           weights_only=False)
    assert state["ds_config"]["zero_optimization"]["offload_optimizer"]["device"] == "cpu"


@pytest.mark.usefixtures("local_ray")
def test_one_worker_runs_stage_0_and_clips_in_the_loop(tmp_path, shards):
    """One worker configured for ZeRO-2: DeepSpeed runs stage 0 (nothing to partition) without its own
    clipping, the loop clips with torch and logs the gradient norm, and the loss goes down."""
    import torch

    from pipelines.stages.pretrain import PretrainConfig
    from pipelines.train.launch import fit
    from pipelines.train.pretrain_task import PretrainTask
    from pipelines.typed import from_dict

    uri, run_id = tracking(tmp_path)
    cfg = from_dict(PretrainConfig, {"recipe": "beit3", "codebook_size": 64, "train": train_cfg(
        steps=20, checkpoint_every=20, warmup_steps=2, num_workers=1, cpus_per_worker=1, micro_batch_size=12,
        grad_clip=0.5)}, "pretrain")
    result = fit(PretrainTask(cfg, shards), cfg.train, name="one", storage_path=str(tmp_path / "train"),
                 tracking_uri=uri, run_id=run_id)
    assert result.metrics["step"] == 20
    curve = losses(uri, run_id)
    first, last = sum(curve[s] for s in (1, 2, 3)) / 3, sum(curve[s] for s in (18, 19, 20)) / 3
    assert last < 0.9 * first, curve
    norms = losses(uri, run_id, "grad_norm")  # the pre-clip norm, from the loop's own clip
    assert sorted(norms) == list(range(1, 21)) and max(norms.values()) > 0.5, norms  # above the clip: pre-clip
    assert all(math.isfinite(v) and v > 0 for v in norms.values()), norms
    with result.checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, "state", "mp_rank_00_model_states.pt"), map_location="cpu",
                           weights_only=False)
    assert state["ds_config"]["zero_optimization"]["stage"] == 0
    assert state["ds_config"]["gradient_clipping"] == 0.0


@pytest.mark.usefixtures("local_ray")
def test_resume_matches_an_uninterrupted_run(tmp_path, shards):
    """8 steps straight vs 4 steps, stop, rerun with the same stage key: steps 5-8 have the same losses
    (abs 1e-4: same seeds, masks drawn from (seed, step, rank), same data positions, same gloo order)."""
    from pipelines.train.launch import fit
    from pipelines.train.pretrain_task import PretrainTask
    from pipelines.typed import from_dict
    from pipelines.stages.pretrain import PretrainConfig

    def run(name, storage, uri_run, **kw):
        cfg = from_dict(PretrainConfig, {"recipe": "omni", "codebook_size": 64, "recipe_overrides": {"mix": {"text": 1, "image": 1,
                        "image_text": 1}}, "train": train_cfg(steps=8, checkpoint_every=4, **kw)}, "pretrain")
        return fit(PretrainTask(cfg, shards), cfg.train, name=name, storage_path=storage,
                   tracking_uri=uri_run[0], run_id=uri_run[1])

    straight = tracking(tmp_path)
    run("straight", str(tmp_path / "a"), straight)
    first, second = tracking(tmp_path), tracking(tmp_path)
    r1 = run("resumed", str(tmp_path / "b"), first, stop_after=4)
    assert r1.metrics["step"] == 4
    r2 = run("resumed", str(tmp_path / "b"), second)
    assert r2.metrics["step"] == 8 and r2.metrics["restarts"] == 1
    a, b1, b2 = losses(*straight), losses(*first), losses(*second)
    assert sorted(b1) == [1, 2, 3, 4] and sorted(b2) == [5, 6, 7, 8]
    for step in range(1, 9):
        got = b1.get(step, b2.get(step))
        assert abs(got - a[step]) < 1e-4, (step, got, a[step])


@pytest.mark.usefixtures("local_ray")
def test_forced_rerun_trains_from_step_0_and_replaces_the_output(tmp_path):
    """A finished pretrain run again with ``forced`` (``omniway run --force``; ``fit(fresh=True)``): the Ray
    Train run of the key is discarded and trained again from step 0 (a rerun that is not forced resumes at
    the last step and trains nothing), and the new export replaces the committed output."""
    import time

    # text only, one worker, 4 steps: the smallest run that trains, checkpoints and exports
    shards = shards_manifest(write_shards(str(tmp_path / "shards"), rows_per_group={"text": 32}))
    config = {"recipe": "beit3", "train": train_cfg(steps=4, checkpoint_every=4, warmup_steps=1, num_workers=1,
                                                    cpus_per_worker=1, micro_batch_size=4)}
    store = str(tmp_path / "store")
    out = os.path.join(store, "t", "pretrain", "k1")
    uri, first_run = tracking(tmp_path)
    first = run_pretrain(store, shards, config, tracking=(uri, first_run))
    assert first["metrics"]["step"] == 4 and first["metrics"]["restarts"] == 0
    assert sorted(losses(uri, first_run)) == [1, 2, 3, 4]
    first_checkpoint = first["extra"]["train_run"]["checkpoint"]
    assert os.path.isdir(first_checkpoint)

    _, second_run = tracking(tmp_path)
    started = time.time()
    second = run_pretrain(store, shards, config, tracking=(uri, second_run), forced=True)
    # trained again from step 0: no checkpoint restored, every step logged again to the new run
    assert second["metrics"]["step"] == 4 and second["metrics"]["restarts"] == 0
    assert sorted(losses(uri, second_run)) == [1, 2, 3, 4]
    assert sorted(MlflowClient(uri).get_metric_history(second_run, "step"), key=lambda m: m.step)[0].value == 1.0
    # ... in a new Ray Train run: the old one (and its checkpoints) was discarded first
    second_checkpoint = second["extra"]["train_run"]["checkpoint"]
    assert second_checkpoint != first_checkpoint and not os.path.exists(first_checkpoint)
    assert os.path.isdir(second_checkpoint)
    # the committed output of the key is the second run's, with files written by it
    with open(os.path.join(out, "_manifest.json")) as f:
        committed = json.load(f)
    assert committed["mlflow_run_id"] == second_run == second["mlflow_run_id"]
    assert committed["fingerprint"] == second["fingerprint"]
    assert sorted(os.listdir(os.path.dirname(out))) == ["_tmp", "_train", "k1"]
    for name in ("model.safetensors", "heads.safetensors", "pretrain.json"):
        assert os.path.getmtime(os.path.join(out, name)) >= started, name


@pytest.mark.usefixtures("local_ray")
def test_missing_shard_file_fails_before_training(tmp_path, shards):
    from pipelines.train.pretrain_task import ShardsError

    os.remove(shards.path("train/part-00000.parquet"))
    with pytest.raises(ShardsError, match="part-00000.parquet.*missing|missing.*part-00000.parquet"):
        run_pretrain(str(tmp_path / "store"), shards, {"train": train_cfg()})
    assert not glob.glob(f"{tmp_path}/store/t/pretrain/_train/*")  # no training run was started


def test_unknown_schema_version_fails_before_training(tmp_path):
    from pipelines.data.reader import UnknownSchemaVersion

    root = write_shards(str(tmp_path / "shards"), rows_per_group=GROUPS, schema_version="omniway.shards/99")
    with pytest.raises(UnknownSchemaVersion, match="omniway.shards/99"):
        run_pretrain(str(tmp_path / "store"), shards_manifest(root), {"train": train_cfg()})
