"""Memory-allocator settings for omniway's processes: the driver and every Ray worker.

Both libraries read them from the environment when they start (NumPy on import, Arrow's
mimalloc on its first allocation), so they travel as environment variables: `connect_ray`
gives them to the job's workers (runtime_env `env_vars`), and the `omniway` command sets them
for itself before it imports either library. A value already set in the environment of
the process that calls `connect_ray`, or in a submitted job's runtime env, wins.

Why: a data worker allocates and frees hundreds of MB per part file (featurized rows,
Parquet buffers, decoded audio). Handing that memory back to the OS and faulting it in again
is pure overhead, and on a VM a fresh page costs far more than a reused one: the host backs
it on first touch. Without these settings the workers spend much of their CPU time in the
kernel, zeroing freshly faulted huge pages; `benchmarks/bench_prepare.py` measures the path.
"""

from __future__ import annotations

import os

ALLOCATOR_ENV = {
    # Arrow's allocator (mimalloc) gives freed memory back to the OS 10 ms after it is freed,
    # and its 1 GiB arena is huge-page backed: the next part file faults in (and zeroes) 2 MiB
    # pages again. 10 s keeps it for reuse while work runs; an idle process still returns it.
    "MIMALLOC_PURGE_DELAY": "10000",
    # NumPy asks for transparent huge pages for every array of >= 4 MiB. A data worker's big
    # arrays (waveforms, FFT frames) live for one sample and are unmapped when freed, so each
    # one faulted in and zeroed whole 2 MiB pages for a single use.
    "NUMPY_MADVISE_HUGEPAGE": "0",
}


def allocator_env() -> dict[str, str]:
    """The settings to give a process; a variable already set in this process's environment
    (the user's choice) replaces the default."""
    return {k: os.environ.get(k, v) for k, v in ALLOCATOR_ENV.items()}


def apply_to_this_process() -> None:
    """Set the defaults in this process's environment (keeping the user's own values).

    Takes effect only if NumPy and pyarrow are not imported yet: call it first thing."""
    for k, v in ALLOCATOR_ENV.items():
        os.environ.setdefault(k, v)
