"""Training's rank 0 killed (a real SIGKILL) while the tracking server is not there: Ray Train restarts the
worker group, and the new rank 0 takes over the metrics the dead one had spooled in the stage's scratch. The
committed output keeps every step logged before the death exactly once, as the dead rank 0 logged it (the
step it replays from its checkpoint is not logged a second time), and the steps after it."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from dataclasses import dataclass

import pytest

from omniway_shard_fixtures import shards_manifest, write_shards
from omniway_test_kinds import GatedPretrainTask
from pipelines.registry import stage_kind
from test_train_faults import WAIT_S, gate_pids, ray_train_workers, registered_checkpoint_step, wait_for

STEPS, CHECKPOINT_EVERY, GATE = 6, 2, 3  # the kill lands after step 3 was logged; the restart resumes at 2


@dataclass
class GatedConfig:
    gate_dir: str = ""


@stage_kind("test-gated-pretrain", config=GatedConfig, version="1", num_cpus=0,
            description="The pretraining task through fit_stage, stopped at a gate (GatedPretrainTask).")
def gated_pretrain(ctx):
    from pipelines.stages.pretrain import PretrainConfig
    from pipelines.train.launch import fit_stage
    from pipelines.typed import from_dict

    cfg = from_dict(PretrainConfig, {"recipe": "beit3", "train": {
        "steps": STEPS, "checkpoint_every": CHECKPOINT_EVERY, "max_failures": 1, "log_every": 1,
        "micro_batch_size": 4, "num_workers": 2, "cpus_per_worker": 0.5, "zero_stage": 2, "warmup_steps": 2,
        "lr": 3e-3, "precision": "fp32"}}, "pretrain")
    task = GatedPretrainTask(cfg, ctx.input("shards"), gate_dir=ctx.config.gate_dir, gate_step=GATE)
    result = fit_stage(ctx, task, cfg.train)
    return {"step": result.metrics["step"], "restarts": result.metrics["restarts"]}


@pytest.mark.usefixtures("local_ray")
def test_a_killed_rank_0_loses_no_unsent_metric_and_repeats_none(tmp_path):
    from pipelines.execute import execute_stage
    from pipelines.storage import Storage
    from pipelines.train.metrics_sender import UNSENT_FILE

    shards = shards_manifest(write_shards(str(tmp_path / "shards"), rows_per_group={"text": 48}))
    with socket.socket() as s:  # bound, never listening, closed: connecting is refused
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    gate = tmp_path / "gate"
    gate.mkdir()
    storage = Storage(str(tmp_path / "store"))
    results: list = []
    errors: list = []

    def run():
        try:  # not tracked (MLflow did not start the run): every line is kept for the output
            results.append(execute_stage(pipeline="t", stage="pretrain", kind="test-gated-pretrain", key="k",
                                         config=GatedConfig(gate_dir=str(gate)), config_dict={},
                                         inputs={"shards": shards}, storage=storage, tracking_uri=dead))
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    stage_thread = threading.Thread(target=run, daemon=True)
    stage_thread.start()
    waiting_pids = gate_pids(gate)
    pids = wait_for("both ranks at the gate", waiting_pids, stage_thread, errors)
    run_dir = f"{storage.stage_dir('t', 'pretrain')}/_train/k"
    assert wait_for("the first checkpoint registered", lambda: registered_checkpoint_step(run_dir),
                    stage_thread, errors) == CHECKPOINT_EVERY
    killed_at_ms = time.time() * 1000
    ray_train_workers()[pids[0]].send_signal(signal.SIGKILL)  # rank 0, with steps 1-3 spooled and unsent
    wait_for("the restarted ranks at the gate", lambda: (p := waiting_pids()) and not set(p) & set(pids) and p,
             stage_thread, errors)
    (gate / "go").touch()
    stage_thread.join(timeout=WAIT_S)
    assert not stage_thread.is_alive() and not errors, errors
    manifest = results[0]
    assert manifest["metrics"] == {"step": STEPS, "restarts": 1}
    assert UNSENT_FILE in {f["path"] for f in manifest["files"]}
    lines = [json.loads(x) for x in open(f"{storage.output_dir('t', 'pretrain', 'k')}/{UNSENT_FILE}")]
    metrics = [x for x in lines if x["kind"] == "metrics"]
    assert [x["step"] for x in metrics] == list(range(1, STEPS + 1))  # each once, in order
    # 1-3 are the dead rank 0's lines (3 was trained again after the restart, and not logged again)
    assert all(x["timestamp_ms"] < killed_at_ms for x in metrics[:GATE])
    assert all(x["timestamp_ms"] > killed_at_ms for x in metrics[GATE:])
