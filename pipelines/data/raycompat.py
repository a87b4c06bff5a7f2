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


def pool(ray, workers: int, units: int):
    """An actor pool of at most `workers` actors, never more than there is work for."""
    return ray.data.ActorPoolStrategy(size=max(1, min(workers, units)))
