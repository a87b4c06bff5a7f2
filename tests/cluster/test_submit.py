"""`omniway submit` against a real `ray start --head` on 127.0.0.1 with a second node."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "cluster" / "local_cluster.sh"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(*args, check=True, timeout=180, cwd=REPO, env=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def cluster():
    port, dash = free_port(), free_port()
    sh(SCRIPT, "start", "--port", port, "--dashboard-port", dash, "--num-cpus", 2)
    try:
        sh(SCRIPT, "add-node", "--port", port, "--num-cpus", 1)
        yield {"port": port, "address": f"http://127.0.0.1:{dash}"}
    finally:
        sh(SCRIPT, "stop", "--port", port, check=False)
    assert subprocess.run(["pgrep", "-f", f"omniway-ray-{port}"], capture_output=True).returncode == 1


SOURCES = ("a", "b", "x")


def project_pipeline(root: Path, fail: bool, log: Path | None = None) -> Path:
    """Sources a and b joined by c; with `log`, also a third source x, and the sources log to `log` and
    each waits until all three have started: three 1-CPU tasks at once, on a head of 2 CPUs, so one of
    them runs on the second node."""
    (root / "omniway_test_kinds.py").write_text(
        (REPO / "tests" / "helpers" / "omniway_test_kinds.py").read_text())
    marker = root / "bug"
    if fail:
        marker.write_text("x")
    body = {
        "name": "jobs",
        "plugins": ["omniway_test_kinds"],
        "stages": {
            "a": {"uses": "test-emit", "with": {"text": "alpha"}},
            "b": {"uses": "test-emit", "with": {"text": "beta"}},
            "c": {"uses": "test-join", "needs": ["a", "b"],
                  "with": {"fail_if_exists": str(marker)}},
        },
    }
    if log is not None:
        stages = body["stages"]
        stages["x"] = {"uses": "test-emit", "with": {"text": "gamma"}}
        for name in SOURCES:
            stages[name]["with"].update({"log": str(log), "rendezvous": len(SOURCES),
                                         "rendezvous_of": list(SOURCES)})
        stages["c"]["needs"] = list(SOURCES)
        stages["c"]["with"]["log"] = str(log)
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_cluster_has_two_nodes(cluster):
    import time

    # A node that `ray start` has just added takes a moment to show up.
    deadline = time.time() + 60
    while True:
        out = sh("ray", "status", "--address", f"127.0.0.1:{cluster['port']}").stdout
        if out.count("node_") >= 2 or time.time() > deadline:
            break
        time.sleep(2)
    assert out.count("node_") >= 2, out


def test_submit_wait_success_runs_on_the_cluster(cluster, tmp_path):
    from omniway_test_kinds import log_lines
    from ray.util.state import list_nodes

    log = tmp_path / "executions.log"
    path = project_pipeline(tmp_path, fail=False, log=log)
    workdir = tmp_path / "work"
    env = {"PYTHONPATH": ""}  # the job gets the project through its working_dir only
    result = sh(sys.executable, "-m", "pipelines.cli", "submit", path.name, "--address",
                cluster["address"], "--working-dir", ".", "--workdir", workdir, "--wait",
                cwd=tmp_path, env=env, timeout=300)
    assert "submitted raysubmit_" in result.stdout
    assert "omniway: attached to the Ray cluster at " in result.stdout  # the job's driver attached, not embedded
    assert "SUCCEEDED" in result.stdout
    outputs = list((workdir / "storage" / "jobs" / "c").glob("*/_manifest.json"))
    assert len(outputs) == 1
    job_id = result.stdout.split("submitted ", 1)[1].split()[0]
    listing = sh(sys.executable, "-m", "pipelines.cli", "jobs", "list", "--address",
                 cluster["address"]).stdout
    assert job_id in listing and "SUCCEEDED" in listing
    logs = sh(sys.executable, "-m", "pipelines.cli", "jobs", "logs", job_id, "--address",
              cluster["address"]).stdout
    assert "c" in logs and "done" in logs
    # the stages ran on the cluster's nodes, and not all on the head: the three sources ran at once
    # (each waited for the others' start), and the head has CPUs for two
    nodes = {n.node_id: n.is_head_node for n in list_nodes(address=cluster["address"]) if n.state == "ALIVE"}
    assert len(nodes) == 2, nodes
    (head,) = [n for n, is_head in nodes.items() if is_head]
    records = log_lines(str(log))
    ran_on = {r["stage"]: r["node"] for r in records if r["event"] == "start"}
    assert sorted(ran_on) == ["a", "b", "c", "x"], records
    assert set(ran_on.values()) <= set(nodes), (ran_on, nodes)
    assert [s for s in SOURCES if ran_on[s] != head], (ran_on, head)  # on the second node
    assert max(r["t"] for r in records if r["event"] == "start" and r["stage"] in SOURCES) < min(
        r["t"] for r in records if r["event"] == "end" and r["stage"] in SOURCES), records


def test_submit_wait_failure_exits_nonzero(cluster, tmp_path):
    path = project_pipeline(tmp_path, fail=True)
    result = sh(sys.executable, "-m", "pipelines.cli", "submit", path.name, "--address",
                cluster["address"], "--workdir", tmp_path / "work", "--wait", check=False,
                cwd=tmp_path, env={"PYTHONPATH": ""}, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED" in result.stdout
    assert "stage 'c' failed" in result.stdout + result.stderr
    assert "refusing to join" in result.stdout + result.stderr


def test_submit_rejects_a_bad_config_before_submitting(cluster, tmp_path):
    path = project_pipeline(tmp_path, fail=False)
    result = sh(sys.executable, "-m", "pipelines.cli", "submit", path.name, "--address",
                cluster["address"], "--set", "c.nope=1", check=False, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert "with.nope: unknown key" in result.stderr
    assert "submitted" not in result.stdout


def test_jobs_stop(cluster, tmp_path):
    (tmp_path / "omniway_test_kinds.py").write_text(
        (REPO / "tests" / "helpers" / "omniway_test_kinds.py").read_text())
    (tmp_path / "slow.yaml").write_text(yaml.safe_dump({
        "plugins": ["omniway_test_kinds"],
        "stages": {"a": {"uses": "test-emit", "with": {"sleep_s": 300.0}}}}))
    result = sh(sys.executable, "-m", "pipelines.cli", "submit", "slow.yaml", "--address",
                cluster["address"], "--workdir", tmp_path / "work", cwd=tmp_path, timeout=120)
    job_id = result.stdout.split("submitted ", 1)[1].split()[0]
    sh(sys.executable, "-m", "pipelines.cli", "jobs", "stop", job_id, "--address", cluster["address"])
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(cluster["address"])
    import time

    deadline = time.time() + 60
    while not client.get_job_status(job_id).is_terminal() and time.time() < deadline:
        time.sleep(0.5)
    assert client.get_job_status(job_id) == JobStatus.STOPPED
    assert not list((tmp_path / "work").glob("storage/*/a/*/_manifest.json"))
