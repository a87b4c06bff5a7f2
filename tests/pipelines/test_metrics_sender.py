"""The training loop's MLflow sender on its own: lines reach a real (sqlite) MLflow store in order with their
steps, tables with their images; against a server that does not exist nothing blocks, and close() hands back
every line, in order, for the output to keep; the spool is removed either way."""

from __future__ import annotations

import json
import os
import socket

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
