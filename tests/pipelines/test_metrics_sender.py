"""The training loop's MLflow sender on its own: lines reach a real (sqlite) MLflow store in order with their
steps, tables with their images; against a server that does not exist nothing blocks, and close() hands back
every line, in order, for the output to keep; the spool is removed either way."""

from __future__ import annotations

import json
import os
import socket
import time

from mlflow.tracking import MlflowClient
from PIL import Image

from pipelines.train.metrics_sender import MetricsSender


def test_lines_reach_mlflow_in_order_and_the_spool_goes(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("t")).info.run_id
    spool = tmp_path / "spool"
    sender = MetricsSender(uri, run_id, str(spool))
    for step in range(1, 31):
        sender.metrics({"loss": 1.0 / step}, step)
    sender.table({"media": [Image.new("RGB", (8, 8), (255, 0, 0))], "answer": ["red"]}, "answers.json")
    assert sender.close(60, str(tmp_path / "unsent.jsonl")) == 0
    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, 31))
    assert {m.step: m.value for m in history}[4] == 0.25
    assert "answers.json" in {a.path for a in client.list_artifacts(run_id)}
    assert not spool.exists() and not (tmp_path / "unsent.jsonl").exists()


def test_an_unreachable_server_never_blocks_and_every_line_is_handed_back(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sender = MetricsSender(f"http://127.0.0.1:{port}", "0" * 32, str(tmp_path / "spool"))
    for step in range(1, 201):  # appends only: the loop goes on while the thread fails to connect
        sender.metrics({"loss": float(step)}, step)
    unsent = tmp_path / "unsent.jsonl"
    assert sender.close(1.0, str(unsent)) == 200
    lines = [json.loads(x) for x in unsent.read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 201)) and lines[0]["metrics"] == {"loss": 1.0}
    assert all(x["timestamp_ms"] > 0 for x in lines) and sender.failures >= 1
    assert not os.path.exists(tmp_path / "spool")


def test_a_sender_on_a_dead_senders_spool_sends_what_it_had_not_and_nothing_twice(tmp_path):
    """Training's rank 0 dies and the restarted one opens a sender on the same spool: what the dead one had
    sent (its count is on disk beside the spool) is not handed on again, what it had not is, in order with
    its own steps and timestamps; the steps the restarted loop replays from its checkpoint are not spooled
    twice, and a line cut short by the death is dropped."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("t")).info.run_id
    spool = tmp_path / "spool"
    dead = MetricsSender(uri, run_id, str(spool))
    for step in (1, 2, 3):
        dead.metrics({"loss": float(step)}, step)
    deadline = time.time() + 60
    while dead.pending and time.time() < deadline:
        time.sleep(0.05)
    assert dead.pending == 0
    dead._stop.set()  # its thread ends as the process would, leaving the spool (no close)
    dead._retry.set()
    dead._thread.join()
    for step in (4, 5):  # logged after the server took 1-3; never sent
        dead.metrics({"loss": float(step)}, step)
    stamps = {x["step"]: x["timestamp_ms"] for x in map(json.loads, (spool / "spool.jsonl").read_text().splitlines())}
    with open(spool / "spool.jsonl", "a") as f:
        f.write('{"kind": "metrics", "metrics": {"loss": 6.0}, "st')  # the death cut this line short

    with socket.socket() as s:  # the server is gone by the time the new rank 0 starts
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    restarted = MetricsSender(f"http://127.0.0.1:{port}", run_id, str(spool))
    assert restarted.resumed == 5 and restarted.pending == 2
    for step in (4, 5, 6):  # resumed from the checkpoint of step 3: 4 and 5 again, then 6
        restarted.metrics({"loss": 10.0 * step}, step)
    unsent = tmp_path / "unsent.jsonl"
    assert restarted.close(1.0, str(unsent)) == 3
    lines = [json.loads(x) for x in unsent.read_text().splitlines()]
    assert [x["step"] for x in lines] == [4, 5, 6]
    assert [x["metrics"]["loss"] for x in lines] == [4.0, 5.0, 60.0]  # 4 and 5 as the dead rank 0 logged them
    assert [x["timestamp_ms"] for x in lines[:2]] == [stamps[4], stamps[5]]
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == [1, 2, 3]
