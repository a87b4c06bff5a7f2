"""Peak memory and time of the evaluate stage's retrieval metrics: chunked exact ranks against the plain
full-matrix computation.

Data: N random unit query embeddings (dim 256, fp32) and N candidates, candidate i = query i plus
Gaussian noise (norm 3.5x the signal), re-normalised, so R@k is neither 0 nor 1; query i's only positive
is candidate i. The chunked run is the evaluate stage's call (`--scores pairs`, the default:
`tasks.retrieval.pair_retrieval_scores` with one positive index list per query, what the retrieval suite
calls) or the label form (`--scores labels`: `tasks.retrieval.retrieval_scores`, labels all distinct):
R@1/5/10, mean and median rank, chance levels and the top-10 candidates per query, `chunk_size` 4096.
The positive lists are built before the peak is reset: they are the suite's input, not the metric's.

  chunked 100k    100,000 x 100,000 (the full matrix would be 40 GB of fp32)
  chunked / full  at the largest N where the full matrix fits (`--full-n` overrides), with the same R@k
                  (asserted) and the ranks compared

How N of the full-matrix run is chosen: its peak is about N^2 x 14 bytes (measured: 14.1 bytes per score
at N = 8,000 and 12,000), i.e. 3.5x the N^2 x 4 bytes of the fp32 matrix: the matrix (4), the identity
positive mask (1), the `(sim >= best) & ~positive` mask (1) and the int64 copy its `.sum(1)` converts it to
(8). N is the largest multiple of 1,000 whose peak fits in half of `psutil.virtual_memory().available`
(the other half left to the rest of the machine), capped at `--max-full-n` (50,000: about 20 s for the full
matrix and 10 s chunked on 2 CPUs, N^2-scaled from 1.2 s and 0.7 s measured at 12,000; the full matrix
is then 10 GB and its peak 35 GB).

How memory is measured: each measurement runs in a fresh Python process that builds its inputs, then
resets the kernel's peak-RSS counter (writing 5 to /proc/self/clear_refs; where that is refused, the
peak of `resource.getrusage` is used and the line says so), runs the metric once and reads VmHWM from
/proc/self/status: "peak extra MB" = VmHWM - RSS just before the call, i.e. what the metric needs on
top of its inputs (inputs: 2 x N x 256 x 4 bytes = 205 MB at 100k). A warm-up call on 64 rows before
the reset pages in torch's kernels, so their code pages do not count. Time is that one call's wall time.

Last line: `retrieval_peak_mb_100k: <peak extra MB of the chunked 100k run>` (target <= 1,024).

    python benchmarks/bench_evaluate.py [--n 100000] [--full-n N] [--max-full-n 50000] [--chunk-size 4096]
                                        [--scores pairs|labels]

A quick check of the script itself: `--n 3000 --full-n 2000` (the last line then names the 3,000 run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

WORKER = r"""
import json, os, resource, sys, time
import torch
sys.path.insert(0, os.getcwd())
from tasks.retrieval import pair_retrieval_scores, retrieval_scores

def rss_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

def full_matrix(q, c, ks):
    # the baseline the chunked result is compared with: the plain computation on the whole (N, N) matrix,
    # simple enough to be right by inspection, so equal R@k and ranks check the chunked bookkeeping
    sim = q @ c.t()  # (N, N)
    positive = torch.eye(sim.shape[0], dtype=torch.bool)
    best = sim.masked_fill(~positive, float("-inf")).max(1).values[:, None]
    rank = ((sim >= best) & ~positive).sum(1) + 1
    return {f"r@{k}": int((rank <= k).sum()) / len(rank) for k in ks}, rank

mode, n, chunk, rank_path, scores = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
g = torch.Generator().manual_seed(0)
q = torch.randn(n, 256, generator=g)
q.div_(q.norm(dim=1, keepdim=True))
c = torch.randn(n, 256, generator=g).mul_(3.5 / 16).add_(q)  # noise of norm ~3.5 (sqrt(256) = 16)
c.div_(c.norm(dim=1, keepdim=True))
ks = (1, 5, 10)
positives = [[i] for i in range(n)] if scores == "pairs" else None  # query i's positive: candidate i

def chunked(q, c, positives):
    if scores == "pairs":  # the retrieval suite's call (pipelines/evaluation/embedding_suites.py)
        return pair_retrieval_scores(q, c, positives, ks=ks, chunk_size=chunk, return_topk=10)
    return retrieval_scores(q, c, ks=ks, chunk_size=chunk, return_topk=10)

# warm-up on 64 rows: the first call pages in torch's kernels (code, thread pools), which is not the
# metric's memory
full_matrix(q[:64], c[:64], ks), chunked(q[:64], c[:64], positives and positives[:64])
try:
    open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
    how = "VmHWM after /proc/self/clear_refs reset"
except OSError:
    how = "ru_maxrss (no peak reset: a lower bound of the peak is hidden below earlier peaks)"
before = rss_kb("VmRSS")
t = time.perf_counter()
if mode == "full":
    recall, rank = full_matrix(q, c, ks)
else:
    out = chunked(q, c, positives)
    recall, rank = {f"r@{k}": out[f"r@{k}"] for k in ks}, out["ranks"]
seconds = time.perf_counter() - t
peak = rss_kb("VmHWM") if how.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if rank_path:
    torch.save(rank, rank_path)
print(json.dumps({"seconds": seconds, "peak_extra_mb": (peak - before) / 1024, "inputs_mb": before / 1024,
                  "recall": recall, "how": how}))
"""


FULL_BYTES_PER_SCORE = 14  # peak of full_matrix per (query, candidate) score, measured (see the docstring)


def choose_full_n(requested: int | None, cap: int) -> tuple[int, str]:
    """N of the full-matrix comparison and a sentence saying how it was chosen."""
    if requested is not None:
        return requested, f"--full-n {requested:,} given"
    import psutil

    available = psutil.virtual_memory().available
    fits = int((available / 2 / FULL_BYTES_PER_SCORE) ** 0.5) // 1000 * 1000
    n = max(1000, min(fits, cap))
    return n, (f"{available / 2**30:.1f} GiB available; half of it fits a full-matrix peak of N^2 x "
               f"{FULL_BYTES_PER_SCORE} bytes up to N = {fits:,}; capped at --max-full-n {cap:,} -> N = {n:,} "
               f"(peak ~{n * n * FULL_BYTES_PER_SCORE / 2**30:.1f} GiB)")


def measure(mode: str, n: int, chunk: int, rank_path: str, scores: str) -> dict:
    """One measurement in a fresh interpreter (so earlier runs' peaks and caches do not count)."""
    out = subprocess.run([sys.executable, "-c", WORKER, mode, str(n), str(chunk), rank_path, scores],
                         capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__))))
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    try:
        for row in open("/proc/cpuinfo"):
            if row.startswith("model name"):
                return row.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def line(name: str, m: dict) -> str:
    recall = ", ".join(f"{k} {v:.4f}" for k, v in m["recall"].items())
    return (f"{name:>22}: {m['seconds']:7.1f} s, peak extra {m['peak_extra_mb']:7.0f} MB "
            f"(RSS before the call {m['inputs_mb']:.0f} MB), {recall}")


def main() -> None:
    import tempfile

    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--full-n", type=int, default=None,
                        help="N of the full-matrix comparison (default: the largest that fits, see the docstring)")
    parser.add_argument("--max-full-n", type=int, default=50_000)
    parser.add_argument("--chunk-size", type=int, default=4096)
    parser.add_argument("--scores", choices=("pairs", "labels"), default="pairs",
                        help="pairs: pair_retrieval_scores, the retrieval suite's call; labels: retrieval_scores")
    args = parser.parse_args()
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs "
          f"(affinity {len(os.sched_getaffinity(0))}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), Python {platform.python_version()}")
    args.full_n, how_n = choose_full_n(args.full_n, args.max_full_n)
    print(f"full-matrix N: {how_n}")
    call = {"pairs": "pair_retrieval_scores (the retrieval suite's call)", "labels": "retrieval_scores"}
    print(f"chunked: tasks.retrieval.{call[args.scores]}, chunk_size {args.chunk_size:,}")
    with tempfile.TemporaryDirectory() as tmp:
        chunked_small = measure("chunked", args.full_n, args.chunk_size, f"{tmp}/chunked.pt", args.scores)
        full_small = measure("full", args.full_n, args.chunk_size, f"{tmp}/full.pt", args.scores)
        differ = int((torch.load(f"{tmp}/chunked.pt") != torch.load(f"{tmp}/full.pt")).sum())
    print(f"memory: {chunked_small['how']}")
    for name, m in ((f"full matrix {args.full_n:,}", full_small), (f"chunked {args.full_n:,}", chunked_small)):
        print(line(name, m))
    print(f"ranks differing between chunked and full at {args.full_n:,}: {differ} of {args.full_n:,}")
    assert chunked_small["recall"] == full_small["recall"], "chunked R@k differ from the full matrix"
    print(f"R@k identical at {args.full_n:,}: yes")
    print(f"full_over_chunked_peak_mb at {args.full_n:,}: "
          f"{full_small['peak_extra_mb'] / max(chunked_small['peak_extra_mb'], 1):.1f}")
    big = measure("chunked", args.n, args.chunk_size, "", args.scores)  # ranks not saved
    print(line(f"chunked {args.n:,}", big))
    print(f"retrieval_peak_mb_100k: {big['peak_extra_mb']:.0f}")


if __name__ == "__main__":
    main()
