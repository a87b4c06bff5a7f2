"""The few Ray facts every data stage relies on, in one place."""

from __future__ import annotations

import os


def ensure_ray():
    """Attach to the runner's Ray; in-process use (tests, scripts) gets a local one.

    Returns the ray module with ordered execution set: two runs over the same input
    then yield rows in the same order, which makes shard files byte-identical.
    """
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    return ray


def no_ramp_up(ds):
    """Let a single map over in-memory items use all its CPUs from the first task (returns `ds`).

    Ray Data reserves resources per operator so that a long pipeline cannot starve its
    downstream operators; until it has measured a task's output, that reservation holds a
    lone map operator to one task at a time (the second task starts only once the first has
    reported output, whatever the task pool size says). A dataset that is one map over items held by the
    driver has nothing downstream to protect. Set on this dataset's own context only.
    """
    ds.context.op_resource_reservation_enabled = False
    return ds


# Set (to "1") in every worker of the embedded local Ray `omniway run` starts (see
# runner.ray_runtime_env): a cluster of fixed size, which no autoscaler grows.
FIXED_SIZE_ENV = "OMNIWAY_RAY_FIXED_SIZE"


def wait_for_free_cpu(ray, who: str, poll_s: float = 0.5) -> float:
    """Block until the embedded Ray has a free CPU, before ``who`` starts a Ray Data job; seconds waited.

    Stages run side by side on the embedded Ray, and a data stage keeps every CPU busy with its tasks
    (``task_pool``). A training stage starting then would launch its read job into a cluster with no free
    CPU: the job only waits for the other stage's tasks, but Ray Data warns that it "will hang". Waiting
    here is the same wait, said truthfully. Only on a cluster of fixed size (FIXED_SIZE_ENV): on one
    that may autoscale, the pending job is what asks for a node, so it starts at once.
    """
    import time

    if os.environ.get(FIXED_SIZE_ENV) != "1":
        return 0.0
    start, said = time.monotonic(), False
    while not ray.available_resources().get("CPU", 0) > 0:
        if not said and time.monotonic() - start > 2:
            total = int(ray.cluster_resources().get("CPU", 0))
            print(f"[{who}] waiting for a free CPU: the tasks of other stages hold all {total}", flush=True)
            said = True
        time.sleep(poll_s)
    return time.monotonic() - start


def task_pool(ray, workers: int, units: int):
    """The `compute` strategy of a task map for `workers` parallel workers: a task pool that
    keeps `pool_size` tasks submitted at once."""
    return ray.data.TaskPoolStrategy(size=pool_size(ray, workers, units))


def pool_size(ray, workers: int, units: int) -> int:
    """How many of `units` tasks to keep submitted at once for `workers` parallel workers (a Ray Data
    `task_pool`, or `bounded_tasks`).

    A task handed out only once another ends reaches its worker late (Ray Data: on its next
    scheduling step, up to 0.1 s later, more on a busy driver; `bounded_tasks`: once the stage
    process has heard of the end), and meanwhile the worker idles: with a few dozen tasks per
    worker that is ~10% of a run on 2 CPUs. When the cluster has no more CPUs than `workers`
    and cannot grow (the embedded Ray of `omniway run`, marked by FIXED_SIZE_ENV), every task
    is submitted at once: the ones beyond `workers` can only wait in Ray's queue (first in,
    first out: the planned order holds), and each starts the moment a worker frees up (one
    extra task per worker still leaves a worker idle between tasks at times). On another
    small cluster one extra per worker is queued (it may autoscale: each queued task asks for
    a CPU); on a bigger one, submitted tasks would run at once, beyond `workers`, so then none
    is queued.
    """
    workers = max(1, min(workers, units))
    if ray.cluster_resources().get("CPU", 0) <= workers:
        if os.environ.get(FIXED_SIZE_ENV) == "1":
            return units
        # The cluster may be an autoscaling one with its nodes not up yet: every queued task
        # would ask the autoscaler for a CPU. One extra per worker bounds that.
        return min(units, 2 * workers)
    return workers


def actor_pool_fit(ray, workers: int, cpus_per_worker: float) -> tuple[int, float]:
    """(actors, CPUs each) of an actor pool that leaves the read tasks feeding it a CPU.

    An actor holds its CPUs for the whole dataset; the read tasks upstream need one each, so actors
    taking every CPU of a cluster that cannot grow (the embedded Ray, FIXED_SIZE_ENV) wait forever for
    input. There the pool is cut to what leaves one CPU free; elsewhere (a cluster may autoscale) it is
    taken as asked.
    """
    total = float(ray.cluster_resources().get("CPU", 0))
    if os.environ.get(FIXED_SIZE_ENV) != "1" or total < 2:
        return max(1, workers), cpus_per_worker
    cpus = min(cpus_per_worker, total - 1)
    return max(1, min(workers, int((total - 1) // max(cpus, 1e-9)))), cpus


# Retries of a pool task whose worker died (killed, OOM, a lost node): Ray Data's map tasks retry without
# end; a bound here lets a task that kills its worker every time (a decoder crashing on one file) fail the
# stage instead of looping. RaySystemError as well, as Ray Data adds it: raised from task code, Ray does not
# count it as the worker's death.
POOL_TASK_RETRIES = 5


def ensure_ray_core():
    """`ensure_ray` for a pass of plain Ray tasks (`bounded_tasks`): attaches to the runner's Ray (in-process
    use gets a local one) without importing Ray Data, which costs the first pass in a process about half
    a CPU-second. Returns the ray module."""
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    return ray


_POOL_TASKS: dict = {}


def pool_task(ray, fn, **options):
    """`fn` as a Ray task of one CPU for `bounded_tasks`, retried when its worker dies; `options` go to
    `ray.remote` (e.g. `num_cpus`). The task must leave nothing committed until it returns whole (write
    under a temporary name, then rename), as a retry redoes it from the start. One remote function per
    (fn, options) in a process: Ray exports a function's code once, not again on each pass."""
    key = (fn, tuple(sorted(options.items())))
    if key not in _POOL_TASKS:
        opts = {"num_cpus": 1, "max_retries": POOL_TASK_RETRIES,
                "retry_exceptions": [ray.exceptions.RaySystemError],
                # not a placement group the caller may run in: the pool's tasks go where CPUs are free
                "scheduling_strategy": "DEFAULT", **options}
        _POOL_TASKS[key] = ray.remote(**opts)(fn)
    return _POOL_TASKS[key]


def bounded_tasks(ray, remote, calls: list[tuple], workers: int):
    """Run ``remote.remote(*args)`` for each ``args`` of ``calls``, submitted in that order with
    `pool_size` of them in flight; yields ``(position in calls, result)`` as each task ends, in any
    order. On an error (a task's, or the caller's while it consumes) the tasks still in flight are
    cancelled.

    For a pass that is only a pool of independent tasks: Ray Data's streaming executor would run its
    scheduling loop in this process, polling the whole time the tasks run (CPU that grows with the run's
    length and competes with the tasks on a small machine); ``ray.wait`` on the refs in flight blocks
    without polling, so this process works once per task. Arguments shared by every call are best
    ``ray.put`` once and passed as the ref (else each submission serialises them again)."""
    size = pool_size(ray, workers, len(calls)) if calls else 0
    pending: dict = {}
    todo = iter(enumerate(calls))

    def submit() -> None:
        for i, args in todo:
            pending[remote.remote(*args)] = i
            if len(pending) >= size:
                return

    try:
        submit()
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                yield pending.pop(ref), ray.get(ref)
            submit()
    finally:
        for ref in pending:
            ray.cancel(ref)
