"""Shared test setup: quiet Ray Data, Ray workers that can import the test kinds."""

import os
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

# Ray workers inherit the environment of the process that starts Ray: put the
# helpers the tests of several packages share (tests/helpers: test stage kinds,
# synthetic shards, a tiny BEiT-3) and the repository on their import path.
_paths = [str(TESTS / "helpers"), str(REPO)]
os.environ["PYTHONPATH"] = os.pathsep.join(
    _paths + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
for p in _paths:
    if p not in sys.path:
        sys.path.insert(0, p)
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest  # noqa: E402


def _shared_ray():
    """The embedded 2-CPU Ray shared by the tests that need one: started on first use and kept
    until the session ends (starting Ray costs seconds; a second ray.init fails); restarted if
    a test shut it down."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    return ray


@pytest.fixture
def local_ray():
    """The shared Ray (see `_shared_ray`), for a test."""
    yield _shared_ray()


@pytest.fixture(scope="module")
def local_ray_module():
    """The shared Ray (see `_shared_ray`), for module-scoped fixtures that build data once."""
    yield _shared_ray()


def pytest_sessionfinish(session, exitstatus):
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
