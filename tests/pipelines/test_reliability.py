"""A killed driver and concurrent runs: nothing half-written ever looks complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import diamond

REPO = Path(__file__).resolve().parents[2]


def omniway(project, *args, **kw) -> subprocess.Popen:
    env = dict(os.environ)
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args,
                             "--workdir", str(project.workdir)],
                            cwd=project.root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


def test_killed_driver_leaves_nothing_that_looks_complete(project):
    path = project.write(diamond(project, c={"sleep_s": 60.0}))
    proc = omniway(project, "run", str(path), "--to", "c")
    deadline = time.time() + 120
    tmp = project.storage / "diamond" / "c" / "_tmp"
    while time.time() < deadline:  # wait until c is writing
        if tmp.exists() and any(tmp.iterdir()):
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    else:
        raise AssertionError("stage c never started")
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its embedded Ray
    proc.wait()
    assert project.manifest_dirs("diamond", "c") == []
    for stage in ("a", "b"):
        (out,) = project.manifest_dirs("diamond", stage)
        assert (out / "_manifest.json").exists()

    # The next run keeps a and b and redoes c.
    project.clear_log()
    fixed = project.write(diamond(project))
    proc = omniway(project, "run", str(fixed), "--to", "c")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert project.runs() == ["c"]
    (c_out,) = project.manifest_dirs("diamond", "c")
    assert json.loads((c_out / "_manifest.json").read_text())["metrics"]["chars"] == 28


def test_two_runs_at_once_on_the_same_storage(project):
    path = project.write(diamond(project, a={"sleep_s": 1.0}))
    first = omniway(project, "run", str(path))
    second = omniway(project, "run", str(path))
    out1, _ = first.communicate(timeout=300)
    out2, _ = second.communicate(timeout=300)
    assert first.returncode == 0, out1
    assert second.returncode == 0, out2
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
