"""Logging set-up for the Ray worker processes of an embedded local Ray (`omniway run`)."""

from __future__ import annotations

import logging

# Ray Train V2 starts a detached PlacementGroupCleaner per run that asks the State API, every
# second, whether the run's controller is alive. The State API is served by the dashboard, which
# the embedded Ray leaves off by default (`ray.dashboard: false`): every query fails and the
# cleaner logs a warning per second of training (~120 lines in the demo's pretrain stage), while
# a normal end of run removes the placement group anyway.
_QUIET = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_state_api_pollers() -> None:
    """`worker_process_setup_hook`: errors only from the loggers in `_QUIET`."""
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.ERROR)
