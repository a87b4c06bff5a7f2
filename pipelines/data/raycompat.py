"""The few Ray facts every data stage relies on, in one place."""

from __future__ import annotations


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


def pool(ray, workers: int, units: int, in_flight: int | None = None):
    """An actor pool of at most `workers` actors, never more than there is work for.

    `in_flight=1` hands each actor its next unit only when it is free: with few, uneven
    units (whole part files) queued work cannot get stuck behind a slow actor.
    """
    return ray.data.ActorPoolStrategy(size=max(1, min(workers, units)),
                                      max_tasks_in_flight_per_actor=in_flight)
