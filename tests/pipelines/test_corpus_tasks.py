"""The task pool the corpus stage's ingest and part passes run on (`raycompat.bounded_tasks`): every call's
result comes back under its position, no more tasks run than the pool allows, a task's error ends the pass."""

from __future__ import annotations

import os
import sys
import time

import pytest
from ray import cloudpickle

from pipelines.data.raycompat import bounded_tasks, pool_size, pool_task

# the task functions below travel by value: the workers cannot import this test module by its name
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _span(i: int, sleep_s: float) -> tuple:
    start = time.time()
    time.sleep(sleep_s)
    return i, start, time.time(), os.getpid()


def _fails_first(i: int) -> int:
    if i == 0:
        raise ValueError("unit 0 is broken")
    return i


def test_one_worker_runs_one_task_at_a_time_and_every_result_comes_back(local_ray):
    ray = local_ray
    assert ray.cluster_resources()["CPU"] >= 2  # room for a second task, had the pool allowed one
    assert pool_size(ray, 1, 6) == 1
    got = dict(bounded_tasks(ray, pool_task(ray, _span), [(i, 0.2) for i in range(6)], workers=1))
    assert sorted(got) == list(range(6))
    assert all(got[i][0] == i for i in got)  # each result under its own call's position
    spans = sorted((start, end) for _, start, end, _ in got.values())
    assert all(prev_end <= start for (_, prev_end), (start, _) in zip(spans, spans[1:])), spans


def test_a_task_error_ends_the_pass(local_ray):
    ray = local_ray
    results = bounded_tasks(ray, pool_task(ray, _fails_first), [(i,) for i in range(4)], workers=2)
    with pytest.raises(ValueError, match="unit 0 is broken"):
        list(results)
