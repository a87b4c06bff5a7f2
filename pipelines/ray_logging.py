"""What of Ray's output reaches the console of `omniway run`, and the logging set-up of its workers.

By default the console shows omniway's own lines only: the runner's (plan, stage start / end, summary),
the lines stages and training rank 0 print in their workers (`[corpus] read ...`, `[train] step ...`:
a bracketed lower-case name first, ``OMNIWAY_LINE``), Ray Data's progress bars (when the output is a
terminal) and the autoscaler's warnings (a resource request that cannot be scheduled). Everything else
workers print (Ray Data's execution plans, Ray Train's reports and checkpoints, DeepSpeed, library
warnings) is left where Ray writes it anyway, the session's `logs/` folder (`worker-*.out` / `.err`),
and what the driver's own `ray` and `mlflow` loggers say below WARNING goes to `omniway-driver.log`
there. `omniway run --verbose` installs none of this: Ray prints as it always does.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time

# Ray Train V2 starts a detached PlacementGroupCleaner per run that asks the State API, every
# second, whether the run's controller is alive. The State API is served by the dashboard, which
# the embedded Ray leaves off by default (`ray.dashboard: false`): every query fails and the
# cleaner logs a warning per second of training (~120 lines in the demo's pretrain stage), while
# a normal end of run removes the placement group anyway.
_QUIET = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)

# A worker line omniway wrote: `[corpus] read 160 = ...`, `[train] step 4/6 ...`, `omniway: ...`. Ray's and
# DeepSpeed's bracketed lines start with a date (`[2026-12-02 18:35:46,519 E ...]`), never a letter.
OMNIWAY_LINE = re.compile(r"^(\[[a-z][\w.-]*\] |omniway[: ])")

# The driver's loggers whose console output is filtered (their handlers get `_DriverFilter`).
DRIVER_LOGGERS = ("ray", "mlflow")
DRIVER_LOG = "omniway-driver.log"
# Notices about Ray's defaults, true of every embedded cluster (noise by nature), at WARNING.
_DRIVER_NOTICES = ("authentication_token_setup",)


def quiet_state_api_pollers() -> None:
    """`worker_process_setup_hook`: errors only from the loggers in `_QUIET`."""
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.ERROR)


def keep_worker_line(line: str) -> bool:
    """Whether a line a Ray worker printed is omniway's own (shown on the console by default)."""
    return bool(OMNIWAY_LINE.match(line))


class _DriverFilter(logging.Filter):
    """On the console handlers of `DRIVER_LOGGERS`: records below WARNING and Ray's notices about its
    defaults are held back from the console, kept in ``held`` until `DriverLog.write_to` has a file."""

    def __init__(self, log: "DriverLog"):
        super().__init__()
        self.log = log

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and record.module not in _DRIVER_NOTICES:
            return True
        self.log.keep(record)
        return False


class DriverLog:
    """What the driver's `ray` and `mlflow` loggers say that the console does not show: held in memory
    until Ray has started (``write_to`` its logs folder), then appended there."""

    def __init__(self):
        self.held: list[str] = []
        self.path: str | None = None
        self._formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._filters: list[tuple[logging.Handler, _DriverFilter]] = []

    def keep(self, record: logging.LogRecord) -> None:
        line = self._formatter.format(record)
        if self.path is None:
            self.held.append(line)
            return
        try:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        except OSError:  # a log line is not worth failing a run for
            pass

    def write_to(self, logs_dir: str) -> None:
        self.path = os.path.join(logs_dir, DRIVER_LOG)
        held, self.held = self.held, []
        for line in held:
            try:
                with open(self.path, "a") as f:
                    f.write(line + "\n")
            except OSError:
                break

    def install(self) -> None:
        import mlflow  # noqa: F401 - both configure their loggers' console handlers on import
        import ray  # noqa: F401

        for name in DRIVER_LOGGERS:
            logger = logging.getLogger(name)

            for handler in logger.handlers:
                f = _DriverFilter(self)
                handler.addFilter(f)
                self._filters.append((handler, f))

    def uninstall(self) -> None:
        for handler, f in self._filters:
            handler.removeFilter(f)
        self._filters = []


def _now() -> str:
    return time.strftime("%H:%M:%S")


def _print_quietly(data: dict) -> None:
    """The driver's handler of what workers print (in place of Ray's ``print_to_stdstream``): omniway's
    lines with the time, Ray Data's progress bars (tqdm_ray's magic lines), the autoscaler's events."""
    from ray._private.worker import print_to_stdstream, print_worker_logs
    from ray.experimental.tqdm_ray import RAY_TQDM_MAGIC

    if data.get("pid") == "autoscaler":
        print_to_stdstream(data, ignore_prefix=False)
        return
    lines = [line if RAY_TQDM_MAGIC in line else f"[{_now()}]   {line}"
             for line in data.get("lines", []) if RAY_TQDM_MAGIC in line or keep_worker_line(line)]
    if lines:
        print_worker_logs({**data, "lines": lines}, sys.stderr if data.get("is_err") else sys.stdout,
                          ignore_prefix=True)


def quiet_console() -> bool:
    """Replace Ray's printing of worker output on this driver by `_print_quietly` (after ``ray.init``
    with ``log_to_driver=True``). False where this Ray has no such hook (nothing is changed then)."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return False
    if not any(name == "ray_print_logs" for name, _ in dispatcher.handlers):
        return False
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", _print_quietly)
    _divert_raylet_notices()
    return True


# What the raylet pushes to every driver that is true of every omniway pipeline on a small node (noise by
# nature): its worker-pool warning counts the registered Python workers against the node's CPUs, and a
# pipeline holds zero-CPU stage tasks, Ray Train's controller and Ray Data's coordinators beside the
# workers that compute, so 8 or more workers on 2 CPUs is how it runs, not a leak.
_RAYLET_NOTICES = re.compile(r"worker processes have been started on node")


def _divert_raylet_notices() -> None:
    """Keep the raylet's `_RAYLET_NOTICES` off the console (its own `raylet.out` in the logs folder has
    them); every other raylet message (a worker killed for memory, an unhandled task error) still prints.
    Ray-internal: the driver's error listener calls ``ray._private.worker.print_to_stdstream`` by its
    module-level name."""
    import ray._private.worker as ray_worker

    original = ray_worker.print_to_stdstream
    if getattr(original, "_omniway", False):
        return

    def print_to_stdstream(data, ignore_prefix: bool):
        if data.get("pid") == "raylet":
            lines = data.get("lines", [])
            kept = [line for line in lines if not _RAYLET_NOTICES.search(line)]  # raylet.out keeps them
            if not kept:
                return
            data = {**data, "lines": kept}
        original(data, ignore_prefix=ignore_prefix)

    print_to_stdstream._omniway = True
    ray_worker.print_to_stdstream = print_to_stdstream


def ray_logs_dir() -> str | None:
    """The `logs/` folder of the Ray session this driver is attached to (where Ray keeps every worker's
    output), or None when it cannot tell."""
    try:
        import ray

        node = ray._private.worker.global_worker.node
        return node.get_logs_dir_path() if node is not None else None
    except Exception:  # a Ray without that attribute: the summary then names no folder
        return None
