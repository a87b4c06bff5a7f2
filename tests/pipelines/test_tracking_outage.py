"""Training never waits on the tracking server: a real `mlflow server` on 127.0.0.1, frozen (SIGSTOP) for
longer than one request's timeout and resumed (SIGCONT), or killed for good, while a pretrain run logs every
step. Frozen: the step rate stays within 20% of the unfrozen one and every step reaches the server once it
answers, with its original step and timestamp. Killed: the run completes and its export keeps what the
server never took (`unsent_metrics.jsonl`), which `send_line` replays."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from omniway_shard_fixtures import shards_manifest, write_shards

pytestmark = [pytest.mark.usefixtures("local_ray"), pytest.mark.slow]
STEPS = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--default-artifact-root", f"{root}/artifacts", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # own group: stop it all
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180  # a loaded 2-core machine takes over a minute to start it
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("mlflow server did not come up")


def run_in_thread(shards, root, url, run_id):
    from pipelines.stages.pretrain import PretrainConfig
    from pipelines.train.launch import fit
    from pipelines.train.pretrain_task import PretrainTask
    from pipelines.typed import from_dict

    cfg = from_dict(PretrainConfig, {"recipe": "beit3", "codebook_size": 64, "train": {
        "steps": STEPS, "micro_batch_size": 4, "num_workers": 2, "cpus_per_worker": 0.5, "zero_stage": 2,
        "log_every": 1, "checkpoint_every": STEPS, "warmup_steps": 2, "lr": 1e-3, "precision": "fp32"}}, "pretrain")
    out = {}

    def target():
        try:
            out["result"] = fit(PretrainTask(cfg, shards), cfg.train, name="outage", storage_path=str(root / "train"),
                                tracking_uri=url, run_id=run_id)
        except BaseException as e:  # noqa: BLE001 - the test reports it
            out["error"] = e

    thread = threading.Thread(target=target)
    thread.start()
    return thread, out


def wait_for_steps(client, run_id, n, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(client.get_metric_history(run_id, "loss")) >= n:
            return
        time.sleep(0.5)
    raise AssertionError(f"fewer than {n} steps reached the server in {timeout}s")


@pytest.fixture
def shards(tmp_path):
    return shards_manifest(write_shards(str(tmp_path / "shards"), rows_per_group={"text": 32, "image_text": 32}))


def test_a_frozen_server_neither_stalls_training_nor_loses_a_step(tmp_path, shards):
    proc, url = start_server(tmp_path)
    try:
        client = MlflowClient(url)
        run_id = client.create_run(client.create_experiment("t")).info.run_id
        thread, out = run_in_thread(shards, tmp_path, url, run_id)
        wait_for_steps(client, run_id, 12)
        os.killpg(proc.pid, signal.SIGSTOP)
        frozen_at = time.time() * 1000
        time.sleep(25)  # longer than one request's timeout (metrics_sender.REQUEST_TIMEOUT_S)
        os.killpg(proc.pid, signal.SIGCONT)
        thawed_at = time.time() * 1000
        thread.join(timeout=600)
        assert "error" not in out, out.get("error")
        history = client.get_metric_history(run_id, "loss")
        steps = sorted(m.step for m in history)
        assert steps == list(range(1, STEPS + 1))  # every step, once, with its own step number
        stamps = {m.step: m.timestamp for m in history}
        frozen = [s for s in steps if frozen_at + 2000 <= stamps[s] <= thawed_at - 2000]
        assert len(frozen) >= 3, "the run did not train while the server was frozen"
        frozen_rate = (len(frozen) - 1) / ((stamps[frozen[-1]] - stamps[frozen[0]]) / 1000)
        # Steps stamped before the freeze (>= 12 reached the server), past the first steps' warm-up.
        before = [s for s in steps if stamps[s] < frozen_at][2:]
        assert len(before) >= 5, (len(before), "steps before the freeze")
        free_rate = (len(before) - 1) / ((stamps[before[-1]] - stamps[before[0]]) / 1000)
        assert frozen_rate >= 0.8 * free_rate, (frozen_rate, free_rate)
        assert out["result"].metrics["tracking/unsent"] == 0
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
        os.killpg(proc.pid, signal.SIGKILL)


def test_a_killed_server_leaves_the_unsent_metrics_in_the_output(tmp_path, shards):
    from pipelines.train.metrics_sender import UNSENT_FILE, send_line

    proc, url = start_server(tmp_path)
    client = MlflowClient(url)
    run_id = client.create_run(client.create_experiment("t")).info.run_id
    thread, out = run_in_thread(shards, tmp_path, url, run_id)
    try:
        wait_for_steps(client, run_id, 5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
    thread.join(timeout=600)
    assert "error" not in out, out.get("error")
    result = out["result"]
    unsent = int(result.metrics["tracking/unsent"])
    assert unsent > 0 and result.metrics["step"] == STEPS
    dest = tmp_path / "export"
    dest.mkdir()
    assert UNSENT_FILE in result.copy_export(str(dest))
    lines = [json.loads(x) for x in (dest / UNSENT_FILE).read_text().splitlines()]
    assert len(lines) == unsent
    steps = [x["step"] for x in lines if x["kind"] == "metrics"]
    assert steps == sorted(steps) and steps[-1] == STEPS  # in order, up to the last step
    # a server back on the same store takes them, with their own steps
    proc, url = start_server(tmp_path)
    try:
        client = MlflowClient(url)
        for item in lines:
            send_line(client, run_id, item)
        # (a batch in flight as the server died may have landed and be resent: steps are compared as a set)
        logged = {m.step for m in client.get_metric_history(run_id, "loss")}
        assert logged == set(range(1, STEPS + 1))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
