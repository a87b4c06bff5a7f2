"""The DeepSpeed config the loop builds (no Ray, no engine): which ZeRO stage runs for a worker count."""

from __future__ import annotations

import pytest

from pipelines.train.config import TrainConfig
from pipelines.train.engine import ds_config, loop_clips


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_configured_stage_runs_with_several_workers(stage):
    cfg = ds_config(TrainConfig(zero_stage=stage, micro_batch_size=4, num_workers=2), world=2)
    assert cfg["zero_optimization"]["stage"] == stage
    assert cfg["train_batch_size"] == 8
    assert ("stage3_param_persistence_threshold" in cfg["zero_optimization"]) == (stage == 3)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_one_worker_runs_stage_0_unless_offloading(stage):
    alone = ds_config(TrainConfig(zero_stage=stage, num_workers=1), world=1)["zero_optimization"]
    assert alone == {"stage": 0}  # nothing to partition: no ZeRO machinery, no ZeRO-3 settings
    offload = ds_config(TrainConfig(zero_stage=stage, num_workers=1, offload_optimizer=True), world=1)
    assert offload["zero_optimization"]["stage"] == stage  # offload needs ZeRO
    assert offload["zero_optimization"]["offload_optimizer"]["device"] == "cpu"


def test_only_a_lone_fp32_stage_0_worker_clips_in_the_loop():
    lone = TrainConfig(zero_stage=2, num_workers=1, precision="fp32", grad_clip=1.5)
    assert loop_clips(lone, 1) and ds_config(lone, 1)["gradient_clipping"] == 0.0  # not clipped twice
    for cfg, world in ((TrainConfig(zero_stage=2, precision="fp32", grad_clip=1.5), 2),  # ZeRO clips
                       (TrainConfig(zero_stage=0, precision="bf16", grad_clip=1.5), 1),  # bf16 optimizer clips
                       (TrainConfig(zero_stage=2, offload_optimizer=True, precision="fp32", grad_clip=1.5), 1)):
        assert not loop_clips(cfg, world) and ds_config(cfg, world)["gradient_clipping"] == 1.5
    assert not loop_clips(TrainConfig(zero_stage=0, precision="fp32", grad_clip=0.0), 1)  # clipping off
