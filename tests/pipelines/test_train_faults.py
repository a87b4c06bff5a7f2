"""A training worker killed mid-run (a real SIGKILL from outside, on a real embedded Ray): Ray Train's
FailureConfig restarts the worker group from the last checkpoint by itself and the run ends complete."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import psutil
import pytest
from mlflow.tracking import MlflowClient

from omniway_shard_fixtures import shards_manifest, write_shards
from omniway_test_kinds import GatedPretrainTask

STEPS, CHECKPOINT_EVERY = 8, 4
WAIT_S = 300  # only so a broken run fails instead of hanging; nothing here asserts on durations


def wait_for(what: str, ready, fit_thread: threading.Thread, errors: list):
    """Poll ``ready()`` until it returns something truthy; fail if the run ended (or failed) first."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        if not fit_thread.is_alive():
            pytest.fail(f"the run ended before {what}: {errors or 'no error'}")
        time.sleep(0.1)
    pytest.fail(f"no {what} within {WAIT_S} s")


def registered_checkpoint_step(run_dir: str) -> int | None:
    """Step of the latest checkpoint the Ray Train controller has registered (it writes this snapshot
    when it registers one; a checkpoint folder alone may not be registered yet, and a restart only
    resumes from registered ones)."""
    try:
        with open(os.path.join(run_dir, "checkpoint_manager_snapshot.json")) as f:
            latest = json.load(f).get("latest_checkpoint_result")
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being written
        return None
    return latest["metrics"].get("step") if latest else None


def gate_pids(gate, ranks: int = 2):
    """A function giving the pids of the ``ranks`` workers waiting at ``gate`` (GatedPretrainTask writes one
    marker per rank), or None while one is not there yet."""
    markers = [gate / f"waiting-rank{r}" for r in range(ranks)]

    def waiting_pids() -> list[int] | None:
        try:
            return [int(m.read_text()) for m in markers]
        except FileNotFoundError:
            return None

    return waiting_pids


def ray_train_workers() -> dict[int, psutil.Process]:
    """Ray Train worker processes started by this test process's Ray (the raylet, a child of this
    process, forks the workers; Ray titles an actor's process ``ray::<ActorClass>...``)."""
    out = {}
    for p in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in p.name() + " ".join(p.cmdline()):
                out[p.pid] = p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


@pytest.mark.usefixtures("local_ray")
def test_killed_worker_restarts_from_last_checkpoint(tmp_path):
    from pipelines.stages.pretrain import PretrainConfig
    from pipelines.train.launch import fit
    from pipelines.typed import from_dict

    # text only: one training stream keeps Ray Data's start-up (twice: the restart reads again) short
    shards = shards_manifest(write_shards(str(tmp_path / "shards"), rows_per_group={"text": 48}))
    cfg = from_dict(PretrainConfig, {"recipe": "beit3", "train": {
        "steps": STEPS, "checkpoint_every": CHECKPOINT_EVERY, "max_failures": 1, "log_every": 1,
        "micro_batch_size": 4, "num_workers": 2, "cpus_per_worker": 0.5, "zero_stage": 2, "warmup_steps": 2,
        "lr": 3e-3, "precision": "fp32"}}, "pretrain")
    gate = tmp_path / "gate"
    gate.mkdir()
    # every rank stops before step CHECKPOINT_EVERY + 1 until the test opens the gate: the kill lands
    # after the first checkpoint and before the run could finish, on any machine; the restarted ranks
    # resume from that checkpoint, so they stop at the same gate
    task = GatedPretrainTask(cfg, shards, gate_dir=str(gate), gate_step=CHECKPOINT_EVERY)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("faults")).info.run_id
    storage, name = str(tmp_path / "train"), "killed"

    results: list = []
    errors: list = []

    def run():
        try:
            results.append(fit(task, cfg.train, name=name, storage_path=storage, tracking_uri=uri, run_id=run_id))
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    fit_thread = threading.Thread(target=run, daemon=True)
    fit_thread.start()

    waiting_pids = gate_pids(gate)
    pids = wait_for("both ranks at the gate", waiting_pids, fit_thread, errors)
    assert wait_for("the first checkpoint registered", lambda: registered_checkpoint_step(os.path.join(storage, name)),
                    fit_thread, errors) == CHECKPOINT_EVERY
    workers = ray_train_workers()
    assert set(pids) <= set(workers), (pids, sorted(workers))  # the ranks run in Ray Train worker processes
    victim = workers[pids[1]]
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)  # gone (reaped by its parent, the raylet)
    # The gate stays shut until the restarted group is at it too: the surviving old rank is torn down by
    # Ray while it waits, so the only failure of the run is the kill (max_failures is 1).
    restarted = wait_for("the restarted ranks at the gate",
                         lambda: (p := waiting_pids()) and not set(p) & set(pids) and p, fit_thread, errors)
    assert set(restarted) <= set(ray_train_workers())
    (gate / "go").touch()

    fit_thread.join(timeout=WAIT_S)
    assert not fit_thread.is_alive(), "the restarted run did not finish"
    assert not errors, errors
    metrics = results[0].metrics
    assert metrics["step"] == STEPS
    assert metrics["restarts"] == 1  # one worker-group restart, from the checkpoint of step 4
    # the loss history continues where the checkpoint left it: every step logged exactly once, so
    # steps 1-4 were not trained again after the restart and none is missing
    history = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))
    # the final export is there too (written by the restarted group's rank 0)
    with results[0].checkpoint.as_directory() as d:
        assert os.path.exists(os.path.join(d, "export", "model.safetensors"))
