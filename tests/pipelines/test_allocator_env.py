"""The allocator settings (pipelines/allocator_env.py) reach the processes that do the work:
the `omniway` command itself, and the Ray Data workers a stage starts, through `connect_ray`
and the runner's per-stage runtime env. Subprocesses: the settings act when a process starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORKER_SCRIPT = textwrap.dedent("""
    import json, os, tempfile

    import ray
    from pipelines.config import load_pipeline
    from pipelines.runner import connect_ray

    spec = load_pipeline("pipelines/configs/demo.yaml", workdir=tempfile.mkdtemp())
    assert connect_ray(spec)

    def seen(batch):
        from numpy._core import multiarray

        batch["purge"] = [os.environ.get("MIMALLOC_PURGE_DELAY")] * len(batch["id"])
        batch["numpy_env"] = [os.environ.get("NUMPY_MADVISE_HUGEPAGE")] * len(batch["id"])
        batch["hugepage"] = [multiarray._get_madvise_hugepage()] * len(batch["id"])
        batch["fixed"] = [os.environ.get("OMNIWAY_RAY_FIXED_SIZE")] * len(batch["id"])
        return batch

    @ray.remote
    def stage():  # as the runner runs a stage: a task with its own env_vars, running Ray Data
        rows = ray.data.range(2, override_num_blocks=2).map_batches(seen).take_all()
        return [{k: r[k] for k in ("purge", "numpy_env", "hugepage", "fixed")} for r in rows]

    env = {"env_vars": {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}}
    print("SEEN", json.dumps(ray.get(stage.options(runtime_env=env).remote()), default=bool))
""")


def _run(script: str, env_extra: dict[str, str], *args: str) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "MIMALLOC_PURGE_DELAY", "NUMPY_MADVISE_HUGEPAGE")}
    env.update({"PYTHONPATH": REPO, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", **env_extra})
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout


def test_ray_data_workers_of_a_stage_get_the_settings_and_the_users_own_value_wins():
    out = _run(WORKER_SCRIPT, {"MIMALLOC_PURGE_DELAY": "1234"})
    line = next(ln for ln in out.splitlines() if ln.startswith("SEEN "))
    seen = json.loads(line[len("SEEN "):])
    assert len(seen) == 2
    for worker in seen:
        assert worker["purge"] == "1234"  # the user's value, not the default
        assert worker["numpy_env"] == "0"
        assert worker["hugepage"] is False  # NumPy read it: no huge pages for its arrays
        assert worker["fixed"] == "1"  # the embedded Ray: task maps may queue every task


CLI_SCRIPT = textwrap.dedent("""
    import os, sys
    mode = sys.argv[1]
    if mode == "cli":
        from pipelines.cli import main
        main(["stages"])
    from numpy._core import multiarray
    print("RESULT", os.environ.get("MIMALLOC_PURGE_DELAY"), multiarray._get_madvise_hugepage())
""")


def test_the_omniway_command_sets_them_for_itself_before_numpy_loads():
    from pipelines.allocator_env import ALLOCATOR_ENV

    def result(mode: str) -> list[str]:
        out = _run(CLI_SCRIPT, {}, mode)
        return next(ln for ln in out.splitlines() if ln.startswith("RESULT ")).split()[1:]

    assert result("cli") == [ALLOCATOR_ENV["MIMALLOC_PURGE_DELAY"], "False"]
    # without the command's set-up, NumPy asks for huge pages (on Linux >= 4.6, as NumPy checks)
    kernel = tuple(int(x) for x in os.uname().release.split(".")[:2])
    assert result("bare") == ["None", str(kernel >= (4, 6))]
