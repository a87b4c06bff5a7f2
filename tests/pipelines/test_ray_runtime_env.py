"""The job-level runtime env `connect_ray` gives Ray (runner.ray_runtime_env), and the task
pool size that depends on it (raycompat.task_pool)."""

from __future__ import annotations

import json

import pytest

from pipelines.allocator_env import ALLOCATOR_ENV
from pipelines.data.raycompat import FIXED_SIZE_ENV, task_pool
from pipelines.runner import JOB_CONFIG_ENV, ray_runtime_env


def test_embedded_and_cluster_envs(monkeypatch):
    monkeypatch.delenv(JOB_CONFIG_ENV, raising=False)
    for key in ALLOCATOR_ENV:
        monkeypatch.delenv(key, raising=False)
    embedded = ray_runtime_env(embedded=True, dashboard=False)
    assert embedded["env_vars"][FIXED_SIZE_ENV] == "1"
    assert embedded["worker_process_setup_hook"] == "pipelines.ray_logging.quiet_state_api_pollers"
    assert "worker_process_setup_hook" not in ray_runtime_env(embedded=True, dashboard=True)
    cluster = ray_runtime_env(embedded=False, dashboard=False)
    assert FIXED_SIZE_ENV not in cluster["env_vars"]  # a cluster may autoscale
    assert "worker_process_setup_hook" not in cluster
    assert {k: cluster["env_vars"][k] for k in ALLOCATOR_ENV} == ALLOCATOR_ENV


def test_a_submitted_jobs_own_variables_are_left_to_it(monkeypatch):
    """`ray job submit --runtime-env` / a RayJob: Ray merges the job's runtime env with the
    driver's ray.init one and refuses any variable set in both."""
    from ray.runtime_env import RuntimeEnv
    from ray.runtime_env.runtime_env import _merge_runtime_env  # what ray.init uses

    job_env = {"env_vars": {"MIMALLOC_PURGE_DELAY": "5", "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
                            "OTHER": "x"}}
    monkeypatch.setenv(JOB_CONFIG_ENV, json.dumps({"runtime_env": job_env}))
    ours = ray_runtime_env(embedded=False, dashboard=False)
    assert not set(ours["env_vars"]) & set(job_env["env_vars"])
    assert ours["env_vars"]["NUMPY_MADVISE_HUGEPAGE"] == "0"
    merged = _merge_runtime_env(RuntimeEnv(**job_env), RuntimeEnv(**ours))
    assert merged is not None  # no conflict
    assert merged["env_vars"]["MIMALLOC_PURGE_DELAY"] == "5"  # the job's value
    # what the test guards against: repeating a job variable makes Ray refuse the merge
    clash = {"env_vars": {**ours["env_vars"], "MIMALLOC_PURGE_DELAY": "10000"}}
    assert _merge_runtime_env(RuntimeEnv(**job_env), RuntimeEnv(**clash)) is None


@pytest.mark.usefixtures("local_ray")
def test_task_pool_queues_every_task_only_on_a_cluster_that_cannot_grow(monkeypatch):
    import ray

    cpus = int(ray.cluster_resources()["CPU"])
    monkeypatch.delenv(FIXED_SIZE_ENV, raising=False)
    assert task_pool(ray, cpus, 40).size == min(40, 2 * cpus)  # may autoscale: one extra each
    monkeypatch.setenv(FIXED_SIZE_ENV, "1")
    assert task_pool(ray, cpus, 40).size == 40
    assert task_pool(ray, cpus, 1).size == 1
    if cpus > 1:  # more CPUs than workers: submitted tasks would run at once, none is queued
        assert task_pool(ray, cpus - 1, 40).size == cpus - 1


def test_a_stage_waits_for_a_free_cpu_instead_of_starting_a_job_that_cannot_run(local_ray, monkeypatch, capsys):
    """Another stage's tasks hold every CPU: on the embedded Ray the training stage waits (and says so)
    until one frees, so its read job never starts into a cluster with no free CPU (Ray Data's "will hang"
    warning); on a cluster that may autoscale it does not wait."""
    import time

    from pipelines.data.raycompat import wait_for_free_cpu

    ray = local_ray
    cpus = int(ray.cluster_resources()["CPU"])

    @ray.remote(num_cpus=1)
    def hold(seconds):
        time.sleep(seconds)

    monkeypatch.delenv(FIXED_SIZE_ENV, raising=False)
    held = [hold.remote(4) for _ in range(cpus)]
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not ray.available_resources().get("CPU", 0) > 0, "the holding tasks never started"
    assert wait_for_free_cpu(ray, "pretrain") == 0.0  # may autoscale: the pending job asks for a node
    monkeypatch.setenv(FIXED_SIZE_ENV, "1")
    waited = wait_for_free_cpu(ray, "pretrain", poll_s=0.05)
    assert ray.available_resources().get("CPU", 0) > 0
    assert waited > 2
    assert f"[pretrain] waiting for a free CPU: the tasks of other stages hold all {cpus}" in capsys.readouterr().out
    ray.get(held)
    assert wait_for_free_cpu(ray, "pretrain") < 0.5  # a free CPU: no wait
