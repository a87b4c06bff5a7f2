"""The DeepSpeed config the loop builds (no Ray): which ZeRO stage runs for a worker count, who clips, and
how bf16 runs (one engine, in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys

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


def test_only_a_lone_stage_0_worker_clips_in_the_loop():
    for precision in ("fp32", "bf16"):  # bf16 keeps fp32 weights and gradients (autocast): torch clips them
        lone = TrainConfig(zero_stage=2, num_workers=1, precision=precision, grad_clip=1.5)
        assert loop_clips(lone, 1) and ds_config(lone, 1)["gradient_clipping"] == 0.0  # not clipped twice
    for cfg, world in ((TrainConfig(zero_stage=2, precision="fp32", grad_clip=1.5), 2),  # ZeRO clips
                       (TrainConfig(zero_stage=0, precision="bf16", grad_clip=1.5), 2),  # DeepSpeed all-reduces
                       (TrainConfig(zero_stage=2, offload_optimizer=True, precision="fp32", grad_clip=1.5), 1)):
        assert not loop_clips(cfg, world) and ds_config(cfg, world)["gradient_clipping"] == 1.5
    assert not loop_clips(TrainConfig(zero_stage=0, precision="fp32", grad_clip=0.0), 1)  # clipping off


@pytest.mark.parametrize("world", [1, 2])
def test_bf16_is_torch_autocast_not_deepspeed_bf16_weights(world):
    cfg = ds_config(TrainConfig(precision="bf16", num_workers=world), world)
    assert cfg["bf16"] == {"enabled": False}
    assert cfg["torch_autocast"]["enabled"] and cfg["torch_autocast"]["dtype"] == "bfloat16"
    assert not ds_config(TrainConfig(precision="fp32"), world)["torch_autocast"]["enabled"]


ENGINE_BF16 = """
import os, socket, torch, deepspeed
from torch import nn
from model.ops import Linear
from pipelines.train.config import TrainConfig
from pipelines.train.engine import build_engine

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
deepspeed.init_distributed(dist_backend="gloo")

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.head, self.norm = Linear(8, 16), nn.Linear(16, 4), nn.LayerNorm(16)
    def forward(self, x):  # x: (B, 8) -> scalar loss
        return self.head(self.norm(self.fc(x))).float().pow(2).mean()

torch.manual_seed(0)
net = Net()
seen = {}
net.fc.register_forward_hook(lambda m, i, o: seen.update(fc=o.dtype))
net.head.register_forward_hook(lambda m, i, o: seen.update(head=o.dtype))
engine = build_engine(net, TrainConfig(precision="bf16", zero_stage=2, num_workers=1, micro_batch_size=4,
                                       warmup_steps=1, steps=2, lr=1e-2), world=1)
before = net.fc.weight.detach().clone()
loss = engine(torch.randn(4, 8))
engine.backward(loss)
engine.step()
assert seen == {"fc": torch.bfloat16, "head": torch.bfloat16}, seen  # matmuls ran in bf16
assert all(p.dtype == torch.float32 for p in net.parameters())  # weights stay fp32
assert not torch.equal(before, net.fc.weight)  # and the optimizer updated them
# DeepSpeed knows the model's own Linear as bf16-safe (reduces its gradients in bf16 under ZeRO)
assert getattr(net.fc.weight, "comm_dtype", None) == torch.bfloat16
assert getattr(net.norm.weight, "comm_dtype", None) is None
print("ok")
"""


def test_bf16_engine_runs_matmuls_in_bf16_over_fp32_weights():
    # a subprocess: deepspeed.initialize needs a process group, which would outlive the test here
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": root}
    out = subprocess.run([sys.executable, "-c", ENGINE_BF16], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout[-2000:] + out.stderr[-4000:]
