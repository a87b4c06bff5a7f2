"""The embedded Ray of `omniway run` without a dashboard: Ray Train's placement-group cleaner,
which polls the (absent) State API every second, stays quiet.

Runs in a subprocess: it needs an embedded Ray of its own, started by `connect_ray`, with driver
logging on (the suite's shared Ray has it off)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WARNING = "Failed to query Ray Train Controller actor state"

SCRIPT = textwrap.dedent("""
    import sys, tempfile, time

    import ray
    from pipelines.config import load_pipeline
    from pipelines.runner import connect_ray

    spec = load_pipeline("pipelines/configs/demo.yaml", workdir=tempfile.mkdtemp())
    assert not spec.ray.dashboard
    if sys.argv[1] == "plain":  # what Ray does without omniway's set-up, for contrast
        ray.init(num_cpus=spec.ray.num_cpus, include_dashboard=False, log_to_driver=True)
    else:
        connect_ray(spec)

    def train():
        time.sleep(4)  # the cleaner polls once a second meanwhile

    @ray.remote
    def stage():  # a training stage, as `omniway run` runs one: a task that calls fit()
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        TorchTrainer(train, scaling_config=ScalingConfig(num_workers=1,
                                                         resources_per_worker={"CPU": 0.5}),
                     run_config=RunConfig(storage_path=tempfile.mkdtemp())).fit()

    # the runner's stage environment (pipelines/runner.py: _execute): this cluster's address
    env = {"env_vars": {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}}
    ray.get(stage.options(runtime_env=env).remote())
    time.sleep(1)  # let the workers' last log lines reach the driver
    print("trained")
""")


def run(mode: str) -> str:
    env = {**os.environ, "RAY_TRAIN_V2_ENABLED": "1", "PYTHONPATH": REPO,
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "trained" in out, out[-3000:]
    return out


def test_train_run_on_embedded_ray_without_dashboard_logs_no_state_api_warnings():
    assert WARNING in run("plain")  # the noise exists without the set-up...
    assert WARNING not in run("omniway")  # ...and connect_ray's worker set-up removes it


POOL_WARNING = "worker processes have been started on node"
POOL_SCRIPT = textwrap.dedent("""
    import sys, tempfile, time

    import ray
    from pipelines.config import load_pipeline
    from pipelines.runner import connect_ray

    spec = load_pipeline("pipelines/configs/demo.yaml", workdir=tempfile.mkdtemp())
    connect_ray(spec, verbose=sys.argv[1] == "verbose")

    @ray.remote(num_cpus=0)
    class Idle:  # a pipeline's zero-CPU workers: stage tasks, Ray Train's controller, Ray Data's coordinators
        def ready(self):
            return True

    actors = [Idle.remote() for _ in range(18)]  # the notice counts 8 past the IO workers
    ray.get([a.ready.remote() for a in actors])
    time.sleep(10)  # let the raylet's notice reach the driver

    # any other raylet message still prints (the driver's error listener hands it to this function)
    ray._private.worker.print_to_stdstream({"lines": ["a worker was killed for memory"], "pid": "raylet",
                                            "is_err": False}, ignore_prefix=False)
    del actors
    print("done")
""")


def test_the_raylets_worker_pool_notice_stays_in_the_logs_and_its_other_messages_print():
    """18 zero-CPU actors on 2 CPUs: the raylet's "N worker processes have been started" notice prints
    with --verbose (Ray as it is) and not on the quiet console; the raylet's other messages still do."""
    env = {**os.environ, "PYTHONPATH": REPO, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)
    outs = {}
    for mode in ("verbose", "quiet"):
        proc = subprocess.run([sys.executable, "-c", POOL_SCRIPT, mode], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=240)
        outs[mode] = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "done" in outs[mode], outs[mode][-3000:]
    assert POOL_WARNING in outs["verbose"]
    assert POOL_WARNING not in outs["quiet"]
    assert "a worker was killed for memory" in outs["quiet"]
