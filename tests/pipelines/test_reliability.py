"""A killed driver and concurrent runs: nothing half-written ever looks complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from conftest import diamond

REPO = Path(__file__).resolve().parents[2]


def omniway(project, *args, **kw) -> subprocess.Popen:
    env = dict(os.environ)
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args,
                             "--workdir", str(project.workdir)],
                            cwd=project.root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


def parts_pipeline(project, hold: Path) -> dict:
    """The diamond's sources a and b, and c writing 6 part files of their lines: it stops after 3 of them
    while `hold` exists. `hold` is the same path in every run, so the key of c is too."""
    body = diamond(project)
    body["stages"]["c"] = {"uses": "test-parts", "needs": ["a", "b"],
                           "with": {"parts": 6, "hold_after": 3, "hold_while_exists": str(hold),
                                    "log": str(project.log)}}
    del body["stages"]["d"]
    return body


def wait_until(what: str, ready, proc: subprocess.Popen, timeout_s: float = 120):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = ready()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}:\n{proc.stdout.read()}")
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout_s} s")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_killed_driver_leaves_nothing_that_looks_complete(project):
    from omniway_test_kinds import log_lines

    hold = project.root / "hold"
    hold.touch()
    path = project.write(parts_pipeline(project, hold))
    proc = omniway(project, "run", str(path), "--to", "c")
    # c has written 3 of its 6 parts and waits: kill it there
    def holding():
        return [r for r in log_lines(str(project.log)) if r["stage"] == "c" and r["event"] == "hold"]

    (record,) = wait_until("c holding after 3 parts", holding, proc)
    tmp = project.storage / "diamond" / "c" / "_tmp"
    (work,) = list(tmp.iterdir())
    assert sorted(p.name for p in work.iterdir()) == [f"part-{i:05d}.txt" for i in range(3)]
    key = work.name.rsplit("-", 1)[0]  # work dirs are <key>-<random>
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its embedded Ray
    proc.wait()
    # the worker that ran c is gone too: nothing can finish (or commit) the half-written output later
    deadline = time.time() + 30
    while alive(record["pid"]):
        assert time.time() < deadline, f"the worker of c ({record['pid']}) outlived its driver"
        time.sleep(0.2)

    # nothing of c looks complete: no output dir for the key, no manifest anywhere under c, only the work dir
    assert project.manifest_dirs("diamond", "c") == []
    assert not (project.storage / "diamond" / "c" / key).exists()
    assert [p.name for p in (project.storage / "diamond" / "c").iterdir()] == ["_tmp"]
    assert list(tmp.iterdir()) == [work] and len(list(work.iterdir())) == 3
    assert not list((project.storage / "diamond" / "c").rglob("_manifest.json*"))
    for stage in ("a", "b"):
        (out,) = project.manifest_dirs("diamond", stage)
        assert (out / "_manifest.json").exists()
    code, out, _ = project.cli("status", str(path))
    assert code == 0
    (row,) = [line.split() for line in out.splitlines() if line.split()[:1] == ["c"]]
    assert row[:5] == ["c", "test-parts", "stale", key, "never"], out  # to run, never committed

    # The next run, of the same pipeline (the same key), keeps a and b and redoes c whole.
    project.clear_log()
    hold.unlink()
    proc = omniway(project, "run", str(path), "--to", "c")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert project.runs() == ["c"]
    (c_out,) = project.manifest_dirs("diamond", "c")
    assert c_out.name == key
    manifest = json.loads((c_out / "_manifest.json").read_text())
    names = [f"part-{i:05d}.txt" for i in range(6)]
    assert [f["path"] for f in manifest["files"]] == names
    assert sorted(p.name for p in c_out.iterdir()) == sorted(names + ["_manifest.json"])
    lines = "alpha\n" * 3 + "beta\n" * 2
    for i, name in enumerate(names):
        assert (c_out / name).read_text() == f"part {i}\n{lines}"
    assert manifest["metrics"] == {"parts": 6, "chars": sum(len(f"part {i}\n{lines}") for i in range(6))}


def test_two_runs_at_once_on_the_same_storage(project):
    from omniway_test_kinds import log_lines

    # a waits until both runs have started it, so both runs execute a at the same time and race to
    # commit the same key (a run that started later would otherwise find it cached)
    path = project.write(diamond(project, a={"rendezvous": 2}))
    first = omniway(project, "run", str(path))
    second = omniway(project, "run", str(path))
    out1, _ = first.communicate(timeout=300)
    out2, _ = second.communicate(timeout=300)
    assert first.returncode == 0, out1
    assert second.returncode == 0, out2
    # the two executions of a overlapped: in two processes, each started before the other ended
    records = [r for r in log_lines(str(project.log)) if r["stage"] == "a"]
    starts = {r["pid"]: r["t"] for r in records if r["event"] == "start"}
    ends = {r["pid"]: r["t"] for r in records if r["event"] == "end"}
    assert len(starts) == 2 and set(ends) == set(starts), records
    assert max(starts.values()) < min(ends.values()), records
    for out in (out1, out2):
        assert "> a (test-emit) started" in out and "+ a done" in out, out
    for stage in "abcd":
        dirs = project.manifest_dirs("diamond", stage)
        assert len(dirs) == 1, (stage, dirs)
        manifest = json.loads((dirs[0] / "_manifest.json").read_text())
        files = sorted(p.relative_to(dirs[0]).as_posix() for p in dirs[0].rglob("*") if p.is_file())
        assert files == sorted([f["path"] for f in manifest["files"]] + ["_manifest.json"])
    (d,) = project.manifest_dirs("diamond", "d")
    assert (d / "lines.txt").read_text() == "ALPHA\n" * 3 + "BETA\n" * 2
    # A third run finds everything cached.
    project.clear_log()
    third = omniway(project, "run", str(path))
    out3, _ = third.communicate(timeout=120)
    assert third.returncode == 0 and project.runs() == [], out3


def test_fully_cached_rerun_imports_neither_ray_nor_mlflow(project):
    path = project.write(diamond(project))
    proc = omniway(project, "run", str(path))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    probe = (
        "import sys\n"
        "from pipelines.cli import main\n"
        f"code = main(['run', {str(path)!r}, '--workdir', {str(project.workdir)!r}])\n"
        "assert code == 0\n"
        "print('LOADED', 'ray' in sys.modules, 'mlflow' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=project.root, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "LOADED False False" in result.stdout
    assert "nothing to run" in result.stdout
