"""Corpus stage scale: the stage process's own cost per sample, its memory across corpus sizes, and
what a second worker buys.

Input: generated webdataset corpora (`pipelines/data/corpus_synthetic.py`: 64x64 PNG noise + a
caption per sample, 5% planted exact duplicates), written first, untimed, one per size.

Each size runs through the real `corpus` stage (`execute_stage`, embedded Ray of `--cpus` CPUs that
this process starts, as `omniway run` does) with 1 worker and with `--workers` workers. Measured for
each run, around `execute_stage` only:

  wall          seconds; samples/s = samples read / wall
  driver CPU    this process's user + system CPU-seconds (getrusage): the stage process, Ray's
                driver-side threads (and Ray Data's executor, where a pass uses it) included, the
                RSS sampler's own thread left out; Ray's workers, raylet and GCS are other
                processes and are not counted. Printed per 10,000 samples.
  peak RSS      this process's resident set, sampled every 20 ms during the run (psutil).

Targets (the issue that introduced worker-written parts): driver CPU <= 0.1 s per 10,000 samples
(the one-process loop it replaced cost about 1.7 s), peak RSS at the largest size within 10% of
that at the smallest, and 2-worker / 1-worker throughput >= 1.7. Throughput needs `--cpus` idle
cores: on a shared machine the workers compete with everything else, and timings are noisy.
The last line is the worst driver CPU per 10,000 samples over every run.

    .venv/bin/python benchmarks/bench_corpus_scale.py [--sizes 50000 200000] [--workers 2] [--cpus 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


class PeakRSS:
    """This process's peak resident set (bytes) while the `with` block runs, sampled by a thread."""

    def __init__(self, every_s: float = 0.02):
        import psutil

        self.proc, self.every_s, self.peak = psutil.Process(), every_s, 0
        self.cpu_s = 0.0  # the sampler thread's own CPU, not the stage's
        self._stop = threading.Event()

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.every_s)
        self.cpu_s = time.thread_time()

    def __enter__(self):
        self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_once(corpus: str, store: str, workers: int, key: str) -> dict:
    from pipelines.execute import execute_stage
    from pipelines.stages.corpus import CorpusConfig, SourceConfig
    from pipelines.storage import Storage

    cfg = CorpusConfig(sources=[SourceConfig(name="w", format="webdataset", path=corpus)],
                       num_workers=workers)
    cpu0, t0 = cpu_s(), time.perf_counter()
    with PeakRSS() as rss:
        res = execute_stage(pipeline="bench", stage="corpus", kind="corpus", key=key, config=cfg,
                            config_dict={}, inputs={}, storage=Storage(store))
    wall, cpu = time.perf_counter() - t0, cpu_s() - cpu0 - rss.cpu_s
    read = res["extra"]["counts"]["read"]
    return {"read": read, "wall": wall, "cpu": cpu, "rss": rss.peak,
            "dups": res["extra"]["counts"]["duplicates"], "cpu_per_10k": cpu / read * 10_000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()

    import ray

    from pipelines.data.corpus_synthetic import write_webdataset_corpus

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, Ray {ray.__version__}; load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    root = tempfile.mkdtemp(prefix="bench-corpus-")
    worst, rss_of, speedups = 0.0, {}, []
    try:
        warm = os.path.join(root, "warm")  # first use in this process and in the workers: imports
        write_webdataset_corpus(warm, 2000, seed=1)
        for w in sorted({1, args.workers}):
            r = run_once(warm, os.path.join(root, "store"), w, f"warm{w}")
            print(f"warm-up, 2000 samples, {w} worker(s) (not in the targets; the first run imports): "
                  f"driver CPU {r['cpu']:.2f} s, {r['wall']:.1f} s", flush=True)
        for size in args.sizes:
            corpus = os.path.join(root, f"c{size}")
            t0 = time.perf_counter()
            write_webdataset_corpus(corpus, size, seed=0)
            print(f"\n{size} samples generated in {time.perf_counter() - t0:.1f} s (untimed)")
            runs = {}
            for w in sorted({1, args.workers}):
                r = runs[w] = run_once(corpus, os.path.join(root, "store"), w, f"s{size}w{w}")
                worst = max(worst, r["cpu_per_10k"])
                print(f"  {w} worker(s): {r['read']} read ({r['dups']} duplicates), {r['wall']:.1f} s, "
                      f"{r['read'] / r['wall']:.0f} samples/s; driver CPU {r['cpu']:.2f} s = "
                      f"{r['cpu_per_10k']:.3f} s per 10k samples; driver peak RSS {r['rss'] / 2**20:.0f} MiB",
                      flush=True)
            rss_of[size] = max(r["rss"] for r in runs.values())
            if args.workers != 1:
                speedups.append(runs[1]["wall"] / runs[args.workers]["wall"])
                print(f"  {args.workers}-worker / 1-worker throughput: {speedups[-1]:.2f} (target >= 1.7)")
            shutil.rmtree(os.path.join(root, "store"), ignore_errors=True)
            shutil.rmtree(corpus, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        ray.shutdown()
    lo, hi = min(args.sizes), max(args.sizes)
    print(f"\ndriver peak RSS at {hi}: {rss_of[hi] / 2**20:.0f} MiB, at {lo}: {rss_of[lo] / 2**20:.0f} MiB, "
          f"ratio {rss_of[hi] / rss_of[lo]:.3f} (target <= 1.10)")
    print("load average at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print("target: driver_cpu_s_per_10k <= 0.1 (the one-process loop: about 1.7)")
    print(f"driver_cpu_s_per_10k: {worst:.3f}")


if __name__ == "__main__":
    main()
