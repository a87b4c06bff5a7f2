"""Benchmark of the training loop: a plain single-process PyTorch loop vs Ray Train + DeepSpeed (1 and 2
workers) on the same debug model and global batch, the data-wait share, and per-worker peak memory of
ZeRO-0 / 2 / 3 with 2 workers on a model whose states dominate memory.

    python benchmarks/bench_train.py [--steps 30]

Last line: ``data_wait_share: <fraction>`` (of the 1-worker Ray+DeepSpeed run).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests", "pipelines")]
os.environ["PYTHONPATH"] = os.pathsep.join([REPO, os.path.join(REPO, "tests", "pipelines"),
                                            os.environ.get("PYTHONPATH", "")])
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

GROUPS = {"text": 64, "image": 64, "image_text": 64}


def make_task(shards, steps: int, workers: int, batch: int, zero: int = 2, model: dict | None = None,
              recipe: str = "beit3"):
    from pipelines.stages.pretrain import PretrainConfig
    from pipelines.train.pretrain_task import PretrainTask
    from pipelines.typed import from_dict

    cfg = from_dict(PretrainConfig, {"recipe": recipe, "codebook_size": 64, "model": model or {},
                                     "train": {"steps": steps, "micro_batch_size": batch // workers,
                                               "num_workers": workers, "cpus_per_worker": 2 / workers * 0.5,
                                               "zero_stage": zero, "log_every": steps, "checkpoint_every": steps,
                                               "precision": "fp32", "warmup_steps": 1}}, "pretrain")
    return PretrainTask(cfg, shards), cfg


def plain_loop(task, cfg, steps: int) -> float:
    """Steps/s of the same model, objective and batches in one process with torch AdamW."""
    import pyarrow.parquet as pq
    import torch

    task.check()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = task.build_model(cfg.train)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=0.05)
    from tasks import GROUPS as G, group_of

    rows = {}
    for e in task.shards.files:
        if e["path"].startswith("train/"):
            for r in pq.read_table(task.shards.path(e["path"])).to_pylist():
                rows.setdefault(group_of(r["modalities"]), []).append(r)

    def numpy(rs):
        import numpy as np

        out = {}
        for k in rs[0]:
            col = np.empty(len(rs), dtype=object)
            for i, r in enumerate(rs):
                col[i] = np.asarray(r[k]) if isinstance(r[k], list) else r[k]
            out[k] = col
        return out

    sizes = {g: b * cfg.train.num_workers for g, b in task.sizes.items()}
    batches = [{g: task.collate(g, numpy(rows[g][(i * n) % len(rows[g]):][:n])) for g, n in sizes.items()}
               for i in range(4)]
    t = None
    for step in range(steps + 3):
        if step == 3:
            t = time.perf_counter()  # skip warm-up steps
        b = task.prepare(batches[step % 4], step=step, rank=0, device=torch.device("cpu"), dtype=torch.float32)
        out = model(b)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return steps / (time.perf_counter() - t)


def ray_loop(task, cfg, tmp: str, name: str) -> dict:
    from pipelines.train.launch import fit

    r = fit(task, cfg.train, name=name, storage_path=tmp)
    return r.metrics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=12)
    args = ap.parse_args()
    import ray

    from omniway_shard_fixtures import shards_manifest, write_shards

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tmp = tempfile.mkdtemp(prefix="bench-train-")
    shards = shards_manifest(write_shards(os.path.join(tmp, "shards"), rows_per_group=GROUPS))

    task, cfg = make_task(shards, args.steps, 1, args.batch)
    plain = plain_loop(task, cfg, args.steps)
    print(f"plain pytorch loop (1 process, 1 thread): {plain:.2f} steps/s", flush=True)
    results = {}
    for workers in (1, 2):
        task, cfg = make_task(shards, args.steps, workers, args.batch)
        m = ray_loop(task, cfg, os.path.join(tmp, "ray"), f"w{workers}")
        results[workers] = m
        sps = 1.0 / m["step_time_s"]
        print(f"ray train + deepspeed zero-2, {workers} worker(s): {sps:.2f} steps/s "
              f"({sps / plain:.2f}x plain), data_wait_share {m['data_wait_share']:.3f}", flush=True)
    # memory: a wide model whose parameters + AdamW states dominate (few tokens, many weights)
    big = {"dim": 512, "layers": 4, "heads": 8, "ffn_dim": 2048}
    mem = {}
    for zero in (0, 2, 3):
        task, cfg = make_task(shards, 4, 2, 4, zero=zero, model=big)
        m = ray_loop(task, cfg, os.path.join(tmp, "mem"), f"z{zero}")
        mem[zero] = max(m["memory/rank0_peak_bytes"], m["memory/rank1_peak_bytes"])
        print(f"zero-{zero}, 2 workers: per-worker peak RSS {mem[zero] / 2**20:.0f} MiB "
              f"({mem[zero] / mem[0]:.2f}x zero-0)", flush=True)
    print(f"ray+deepspeed 1 worker / plain: {1.0 / results[1]['step_time_s'] / plain:.2f}")
    print(f"data_wait_share: {results[1]['data_wait_share']:.4f}")


if __name__ == "__main__":
    main()
