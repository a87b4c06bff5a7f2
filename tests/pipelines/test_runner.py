"""The DAG runner on a real embedded Ray, real files and a real MLflow (sqlite)."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from conftest import diamond

pytestmark = pytest.mark.usefixtures("local_ray")


def run(project, body, *args):
    path = project.write(body)
    code, out, err = project.cli("run", str(path), *args)
    return code, out, err


def manifest(project, stage) -> dict:
    dirs = project.manifest_dirs("diamond", stage)
    assert len(dirs) >= 1, f"no output for {stage}"
    newest = max(dirs, key=lambda d: json.loads((d / "_manifest.json").read_text())["created_at"])
    return json.loads((newest / "_manifest.json").read_text())


def test_first_run_then_fully_cached(project):
    code, out, err = run(project, diamond(project))
    assert code == 0, err
    assert sorted(project.runs()) == ["a", "b", "c", "d"]
    d = project.manifest_dirs("diamond", "d")[0]
    assert (d / "out" / "lines.txt").read_text() == "ALPHA\n" * 3 + "BETA\n" * 2
    m = json.loads((d / "_manifest.json").read_text())
    assert m["files"][0]["path"] == "lines.txt" and len(m["files"][0]["sha256"]) == 64
    assert m["metrics"] == {"chars": 28, "inputs": 1}
    assert m["inputs"] == {"c": manifest(project, "c")["fingerprint"]}
    assert manifest(project, "a")["rows"] == 3

    project.clear_log()
    code, out, err = run(project, diamond(project))
    assert code == 0
    assert project.runs() == []
    assert "nothing to run" in out


def test_config_change_reruns_stage_and_downstream_only(project):
    assert run(project, diamond(project))[0] == 0
    project.clear_log()
    code, out, _ = run(project, diamond(project), "--set", "b.text=gamma")
    assert code == 0
    assert project.runs() == ["b", "c", "d"]
    assert (project.manifest_dirs("diamond", "b")).__len__() == 2  # old key kept
    # Back to the old value: everything is cached again under the old keys.
    project.clear_log()
    assert run(project, diamond(project))[0] == 0
    assert project.runs() == []


def test_downstream_config_change_keeps_upstream(project):
    assert run(project, diamond(project))[0] == 0
    project.clear_log()
    assert run(project, diamond(project, d={"upper": False}))[0] == 0
    assert project.runs() == ["d"]


def test_forced_upstream_with_same_bytes_keeps_downstream_cached(project):
    assert run(project, diamond(project))[0] == 0
    project.clear_log()
    code, out, _ = run(project, diamond(project), "--only", "a", "--force")
    assert code == 0 and project.runs() == ["a"]
    project.clear_log()
    # a's bytes did not change, so its fingerprint and everything below are unchanged.
    assert run(project, diamond(project))[0] == 0
    assert project.runs() == []


def test_selection_only_from_to_force(project):
    body = diamond(project)
    code, out, err = run(project, body, "--to", "c")
    assert code == 0, err
    assert sorted(project.runs()) == ["a", "b", "c"]
    assert project.manifest_dirs("diamond", "d") == []

    project.clear_log()
    assert run(project, body, "--only", "d")[0] == 0
    assert project.runs() == ["d"]

    project.clear_log()
    assert run(project, body, "--from", "c", "--force")[0] == 0
    assert project.runs() == ["c", "d"]

    project.clear_log()
    assert manifest(project, "b")["metrics"]["forced"] == 0
    assert run(project, body, "--only", "b", "--force")[0] == 0
    assert project.runs() == ["b"]
    assert manifest(project, "b")["metrics"]["forced"] == 1  # the stage knew (training starts over)

    project.clear_log()
    assert run(project, body, "--force")[0] == 0
    assert sorted(project.runs()) == ["a", "b", "c", "d"]


def test_only_with_missing_upstream_is_an_error_before_work(project):
    code, out, err = run(project, diamond(project), "--only", "c")
    assert code == 2
    assert "'c' needs 'a'" in err and "--to a" in err
    assert project.runs() == []


def test_dry_run_prints_plan_and_runs_nothing(project):
    assert run(project, diamond(project), "--to", "a")[0] == 0
    project.clear_log()
    code, out, _ = run(project, diamond(project), "--dry-run")
    assert code == 0 and project.runs() == []
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line[:2] in ("a ", "b ", "c ", "d ")}
    assert lines["a"][2] == "cached" and lines["b"][2] == "stale" and lines["c"][2] == "stale"
    assert lines["c"][3] == "(pending)"
    code, out, _ = run(project, diamond(project), "--dry-run", "--force", "--only", "a")
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line[:2] in ("a ", "b ", "c ", "d ")}
    assert lines["a"][2] == "forced" and lines["b"][2] == "skipped"
    assert project.runs() == []


def test_failing_stage_leaves_no_output_and_keeps_upstream(project, tmp_path):
    marker = tmp_path / "bug"
    marker.write_text("x")
    body = diamond(project, c={"fail_if_exists": str(marker)})
    code, out, err = run(project, body)
    assert code == 1
    assert "stage 'c' failed" in err and "refusing to join" in err
    assert project.manifest_dirs("diamond", "c") == []
    assert project.manifest_dirs("diamond", "d") == []
    tmp = project.storage / "diamond" / "c" / "_tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []
    summary = {line.split()[0]: line.split()[1] for line in out.splitlines()
               if line[:2] in ("a ", "b ", "c ", "d ") and len(line.split()) > 1}
    assert summary["c"] == "failed" and summary["d"] == "not-run"

    marker.unlink()  # the "fix"
    project.clear_log()
    assert run(project, body)[0] == 0
    assert project.runs() == ["c", "d"]


def test_independent_stages_run_at_the_same_time(project):
    body = diamond(project, a={"sleep_s": 2.0}, b={"sleep_s": 2.0})
    assert run(project, body, "--to", "c")[0] == 0
    events = {}
    for line in project.log.read_text().splitlines():
        stage, event, t = line.split()[:3]
        events[(stage, event)] = float(t)
    # Each source sleeps 2 s; run one after the other they could not overlap.
    assert events[("a", "start")] < events[("b", "end")]
    assert events[("b", "start")] < events[("a", "end")]
    assert events[("c", "start")] >= max(events[("a", "end")], events[("b", "end")])


def test_status_reports_state_key_last_run_and_mlflow_run(project):
    body = diamond(project)
    path = project.write(body)
    assert project.cli("run", str(path), "--to", "c")[0] == 0
    code, out, _ = project.cli("status", str(path))
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:2] in ("a ", "b ", "c ", "d ")}
    assert rows["a"][2] == "cached" and rows["c"][2] == "cached" and rows["d"][2] == "stale"
    m = manifest(project, "c")
    assert rows["c"][3] == m["key"] and rows["c"][5] == m["mlflow_run_id"]
    assert rows["d"][4] == "never"


def test_mlflow_run_tree(project):
    assert run(project, diamond(project), "--only", "a", "--only", "b")[0] == 0
    first_a = manifest(project, "a")["mlflow_run_id"]
    code, out, _ = run(project, diamond(project, d={"upper": False}))
    assert code == 0
    client = MlflowClient(project.tracking_uri)
    exp = client.get_experiment_by_name("diamond")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 2
    parent = parents[-1]
    assert parent.info.status == "FINISHED"
    children = {r.data.tags["omniway.stage"]: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == ["a", "b", "c", "d"]
    a, c = children["a"], children["c"]
    assert a.data.tags["omniway.cache_hit"] == "true"
    assert a.data.tags["omniway.source_run_id"] == first_a
    assert c.data.tags["omniway.cache_hit"] == "false"
    assert c.data.tags["omniway.key"] == manifest(project, "c")["key"]
    assert children["d"].data.params["upper"] == "False"
    assert c.data.metrics["chars"] == 28.0
    arts = [f.path for f in client.list_artifacts(c.info.run_id)]
    assert "_manifest.json" in arts
    assert "pipeline.resolved.yaml" in [f.path for f in client.list_artifacts(parent.info.run_id)]
    # Step metrics logged by the stage itself from its Ray worker.
    history = client.get_metric_history(c.info.run_id, "chars")
    assert history and history[-1].value == 28.0
    emitted = client.get_metric_history(a.data.tags["omniway.source_run_id"], "progress")
    assert [m.step for m in emitted] == [1]


def test_failed_stage_run_is_marked_failed_in_mlflow(project, tmp_path):
    marker = tmp_path / "bug"
    marker.write_text("x")
    assert run(project, diamond(project, c={"fail_if_exists": str(marker)}))[0] == 1
    client = MlflowClient(project.tracking_uri)
    exp = client.get_experiment_by_name("diamond")
    runs = client.search_runs([exp.experiment_id], "tags.`omniway.stage` = 'c'")
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert "refusing to join" in runs[0].data.tags["omniway.error"]
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FAILED"


def test_uri_storage_commits_through_pyarrow_fs(project):
    body = diamond(project)
    body["storage"] = f"file://{project.root}/remote-store"
    code, out, err = run(project, body)
    assert code == 0, err
    d = project.root / "remote-store" / "diamond" / "d"
    (key_dir,) = [p for p in d.iterdir() if not p.name.startswith("_")]
    assert (key_dir / "out" / "lines.txt").read_text() == "ALPHA\n" * 3 + "BETA\n" * 2
    assert (key_dir / "_manifest.json").exists()
    project.clear_log()
    assert run(project, body)[0] == 0 and project.runs() == []


def test_metric_names_mlflow_rejects_are_mapped_once_for_every_logger():
    from pipelines.tracking import metric_name

    assert metric_name("val/image_to_text/r@1") == "val/image_to_text/r_at_1"
    assert metric_name("loss/mlm") == "loss/mlm"
    assert metric_name("a#b") == "a_b"
