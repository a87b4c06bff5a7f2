"""A tracking server that is not there never costs a stage's output: `omniway run --tracking-uri` at a port
nothing listens on (a real connection refused, no server needed) says once that the run is not tracked,
commits every output with its manifest, and each output keeps what its stage logged (`unsent_metrics.jsonl`
and the files its lines name). `omniway sync-metrics` then sends it to a real MLflow store (sqlite): the
metrics with their steps, the table with its image, the artifacts; a second sync sends nothing again.

One run (a corpus of generated images with two rejects, which logs a sample grid and its rejects, and a
stage that logs metrics, a table and an artifact), on the suite's embedded Ray."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import time

import pytest
from PIL import Image

from pipelines import cli
from pipelines.train.metrics_sender import MEDIA_PREFIX, UNSENT_FILE, media_of

PIPELINE = """
name: offline
plugins: [omniway_tracking_kinds]
stages:
  corpus:
    uses: corpus
    with:
      sources:
        - {name: shapes, format: jsonl, path: INDEX}
      val_fraction: 0.25
      rows_per_file: 8
      num_workers: 1
      plot_samples: 4
  logger:
    uses: test-log
    with: {steps: 3}
"""


def _dead_port() -> int:
    with socket.socket() as s:  # bound, never listening, closed: connecting is refused
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _omniway(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


class Project:
    def __init__(self, root):
        self.root = root
        self.path = str(root / "offline.yaml")
        self.workdir = str(root / ".omniway")
        self.dead = f"http://127.0.0.1:{_dead_port()}"

    def omniway(self, command: str, *args: str) -> tuple[int, str, str]:
        return _omniway(command, self.path, "--workdir", self.workdir, *args)

    def output(self, stage: str):
        (key_dir,) = [p for p in (self.root / ".omniway" / "storage" / "offline" / stage).iterdir()
                      if not p.name.startswith("_")]
        return key_dir, json.loads((key_dir / "_manifest.json").read_text())


def _write_corpus(root) -> None:
    rows = []
    for i in range(8):
        colour = ("red", "green", "blue")[i % 3]
        Image.new("RGB", (16, 16), colour).save(root / f"img{i}.png")
        rows.append({"image": f"img{i}.png", "text": f"a {colour} square number {i}"})
    (root / "broken.png").write_bytes((root / "img0.png").read_bytes()[:40])
    rows += [{"image": "broken.png", "text": "cut short"}, {"image": "absent.png", "text": "not there"}]
    (root / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "offline.yaml").write_text(PIPELINE.replace("INDEX", str(root / "index.jsonl")))


@pytest.fixture(scope="module")
def offline(tmp_path_factory, local_ray_module):
    root = tmp_path_factory.mktemp("offline")
    _write_corpus(root)
    project = Project(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        started = time.time()
        code, out, err = project.omniway("run", "--tracking-uri", project.dead)
        project.seconds = time.time() - started
    project.run = (code, out, err)
    return project


def test_a_tracking_server_that_is_not_there_costs_no_output(offline):
    code, out, err = offline.run
    assert code == 0, (out + err)[-4000:]
    print(f"run with the tracking server down: {offline.seconds:.1f}s")
    # said once, with the cause; no call after it waited on the server or complained again
    said = [line for line in err.splitlines() if "could not start this run" in line]
    assert len(said) == 1 and offline.dead in said[0] and "Connection refused" in said[0], err
    assert "did not take" not in err, err
    for stage, lines in (("corpus", 2), ("logger", 5)):  # corpus: its sample grid and its rejects file
        assert f"{lines} logged lines of stage {stage!r} did not reach MLflow" in out, out
        started = [line for line in out.splitlines() if f"> {stage} (" in line and " started, key " in line]
        assert len(started) == 1 and started[0].endswith("untracked (its metrics are kept in its output)"), out
        key_dir, manifest = offline.output(stage)
        listed = {f["path"] for f in manifest["files"]}
        assert UNSENT_FILE in listed and manifest["mlflow_run_id"] is None
        assert manifest["extra"]["tracking_unsent"] == lines
        items = [json.loads(x) for x in (key_dir / UNSENT_FILE).read_text().splitlines()]
        assert len(items) == lines
        media = [p for item in items for p in media_of(item)]
        assert media and all(p.startswith(MEDIA_PREFIX) and p in listed and (key_dir / p).is_file() for p in media)
    _, manifest = offline.output("corpus")
    assert {f["path"] for f in manifest["files"] if f["path"].endswith(".parquet")} >= {"train/part-00000.parquet"}
    items = [json.loads(x) for x in (offline.output("corpus")[0] / UNSENT_FILE).read_text().splitlines()]
    assert sorted((i["name"], i["artifact_path"]) for i in items)[0] == ("corpus_samples.png", None)
    rejects = [i["name"] for i in items if i["artifact_path"] == "rejects"]
    assert len(rejects) == 1 and any(f["path"].endswith("/" + rejects[0]) and "reject" in f["path"]
                                     for f in manifest["files"]), (rejects, manifest["files"])
    items = [json.loads(x) for x in (offline.output("logger")[0] / UNSENT_FILE).read_text().splitlines()]
    assert [i["step"] for i in items if i["kind"] == "metrics"] == [1, 2, 3]
    # every committed output, the kept lines and files included, is what its manifest lists
    code, out, _ = offline.omniway("verify")
    assert code == 0 and out.count(" none") == 2, out


def test_sync_metrics_sends_what_the_outputs_kept_once(offline):
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import TAG_STAGE

    uri = f"sqlite:///{offline.root}/mlflow.db"
    code, out, err = offline.omniway("sync-metrics", "--tracking-uri", uri)
    assert code == 0, out + err
    assert "corpus: sent 2 of 2 lines" in out and "logger: sent 5 of 5 lines" in out, out
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("offline")
    runs = {r.data.tags[TAG_STAGE]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"corpus", "logger"}
    logger = runs["logger"].info.run_id
    history = client.get_metric_history(logger, "progress")
    assert sorted((m.step, m.value) for m in history) == [(1, 1 / 3), (2, 2 / 3), (3, 1.0)]
    assert runs["logger"].data.metrics["steps"] == 3  # what the stage returned, from its manifest
    top = {a.path for a in client.list_artifacts(logger)}
    assert "colours.json" in top and "notes" in top
    assert [a.path for a in client.list_artifacts(logger, "notes")] == ["notes/notes.txt"]
    table = json.loads(open(client.download_artifacts(logger, "colours.json")).read())
    assert table["columns"] == ["image", "colour"] and table["data"][0][1] == "red"
    corpus = runs["corpus"].info.run_id
    assert "corpus_samples.png" in {a.path for a in client.list_artifacts(corpus)}
    assert len(client.list_artifacts(corpus, "rejects")) == 1
    # a second sync finds the runs and what the first sent there: nothing is sent twice
    code, out, err = offline.omniway("sync-metrics", "--tracking-uri", uri)
    assert code == 0 and out.count("in an earlier sync; nothing to send") == 2, out + err
    assert len(client.get_metric_history(logger, "progress")) == 3
    assert len(client.search_runs([exp.experiment_id])) == 2


@pytest.fixture
def hung_server():
    """A real TCP listener that never accepts: connections complete (the kernel's backlog) and every request
    waits for an answer that never comes, as from a frozen server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def test_a_hung_server_costs_a_stage_one_request_timeout_and_no_data(tmp_path, hung_server, monkeypatch, capsys):
    from omniway_tracking_kinds import LogConfig

    from pipelines.execute import execute_stage
    from pipelines.storage import Storage
    from pipelines.tracking import PipelineTracker

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")  # the bound MLflow's calls get (default 10 s)
    started = time.time()
    data = execute_stage(pipeline="t", stage="logger", kind="test-log", key="k", config=LogConfig(), config_dict={},
                         inputs={}, storage=Storage(str(tmp_path / "store")), run_id="0" * 32,
                         tracking_uri=hung_server, plugins=("omniway_tracking_kinds",))
    took = time.time() - started
    out_dir = tmp_path / "store" / "t" / "logger" / "k"
    items = [json.loads(x) for x in (out_dir / UNSENT_FILE).read_text().splitlines()]
    assert [i["kind"] for i in items] == ["metrics"] * 3 + ["table", "artifact"]
    assert data["extra"]["tracking_unsent"] == 5 and data["mlflow_run_id"] == "0" * 32
    assert all((out_dir / p).is_file() for i in items for p in media_of(i))
    assert "the tracking server did not take 5 logged lines" in capsys.readouterr().out
    with capsys.disabled():
        print(f"\nstage against a hung server: {took:.1f}s")
    # the runner's bookkeeping: one timed-out call, then the run goes on untracked
    started = time.time()
    tracker = PipelineTracker(hung_server, "t", "r")
    with capsys.disabled():
        print(f"parent run against a hung server: {time.time() - started:.1f}s")
    assert tracker.parent_id is None and "timed out" in tracker.offline, tracker.offline
    assert tracker.start_stage("s", "test-log", "k", {}) is None and tracker.failures == 0  # not called again
    assert "could not start this run" in capsys.readouterr().err
