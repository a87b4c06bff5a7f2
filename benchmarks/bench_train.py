"""Benchmark of the training loop, in one run:

1. steps/s of a plain single-process PyTorch loop (torch AdamW, pre-collated batches) vs the Ray Train +
   DeepSpeed path (``pipelines.train.launch.fit``, ZeRO-2; a single worker runs stage 0, see
   ``pipelines.train.engine.zero_stage``) with 1 and 2 workers, on the same debug model,
   recipe and global batch; every worker runs one torch thread, as the plain loop does (the plain loop is
   timed before and after the Ray runs, and their mean is the baseline: the machine's load drifts);
2. the data-wait share of the Ray path's step time (time blocked on ``next(stream)``);
3. per-worker model + optimizer state bytes for ZeRO-0 / 2 / 3 with 2 workers on a wider model whose
   states dominate memory, counted from the DeepSpeed engine each worker holds (see ``state_bytes``);
   peak RSS is printed too, but on CPU it is mostly the Python / torch / Ray imports.

    python benchmarks/bench_train.py [--steps 20] [--batch 12] [--augment]
    python benchmarks/bench_train.py --gpu [--size base] [--image-size 224] [--batch 96] [--augment]

``--augment``: the recipe's training-image augmentation on (BEiT's crop, flip and colour jitter, in the
workers' collate, ``PretrainTask.collate_train``); on CPU the MIM target stays the visual tokens, so the
frozen visual tokenizer (the 32 px test fixture) runs on every augmented view in the workers too, as in a
stage run; with ``--gpu`` the target is pixels (no tokenizer fits 224 px here): augmentation alone. The
ZeRO state section is left out then (augmentation changes no state). The plain loop's pre-collated
batches are augmented (and tokenized) once, before its timing, so it times the same model work.

``--gpu``: one GPU, one Ray Train worker (4 CPUs) against the plain loop on the same GPU, both bf16 as
autocast over fp32 weights (the engine's ``torch_autocast``, see ``pipelines.train.engine.ds_config``), the
base model at 224 px with the pixel MIM target; the ZeRO-0/2/3 state section runs on CPU only. Measured on
an H100 (batch 96): plain 6.54 steps/s, Ray Train + DeepSpeed 6.56 (1.00x), data wait 0.0031.

The Ray runs train ``2 * steps`` steps and log every ``steps``: their final metrics are the second window,
past Ray Data's start and DeepSpeed's first steps (the plain loop skips 3 warm-up steps the same way).
The shards hold enough rows that the run stays inside one epoch of every stream, as on a real corpus.
Last line: ``data_wait_share: <fraction>`` (the 1-worker Ray+DeepSpeed run's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests", "helpers")]
os.environ["PYTHONPATH"] = os.pathsep.join([REPO, os.path.join(REPO, "tests", "helpers"),
                                            os.environ.get("PYTHONPATH", "")])
os.environ.setdefault("DS_ACCELERATOR", "cuda" if "--gpu" in sys.argv else "cpu")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

GROUPS = ("text", "image", "image_text")  # the beit3 recipe's mix
# wide and shallow, few tokens per sample: parameters + AdamW moments dominate what a worker holds
STATE_MODEL = {"dim": 512, "layers": 4, "heads": 8, "ffn_dim": 2048, "modalities": ["vision", "text"]}


def make_task(shards, *, steps: int, workers: int, batch: int, zero: int = 2, model: dict | None = None,
              log_every: int | None = None, gpu: dict | None = None, visual=None, augment: bool = False):
    """The pretrain task and config the stage would build; ``batch`` is the global batch. ``gpu``:
    {size, image_size} for a one-GPU run (bf16, pixel MIM target: the fixture codes fit 32 px only).
    ``augment``: the recipe's image augmentation on; ``visual``: the visual-tokenizer manifest that then
    tokenizes the augmented views (visual-token MIM target)."""
    from pipelines.stages.pretrain import PretrainConfig
    from pipelines.train.pretrain_task import PretrainTask
    from pipelines.typed import from_dict

    # CPU: one CPU in all for the workers, one left to Ray Data (2-core machines)
    device = ({"use_gpu": True, "precision": "bf16", "cpus_per_worker": 4.0} if gpu else
              {"precision": "fp32", "cpus_per_worker": 1.0 / workers})
    extra = {"size": gpu["size"], "image_size": gpu["image_size"], "mim_target": "pixels"} if gpu else {}
    if augment:
        extra["recipe_overrides"] = {"augment": {"enabled": True}}
    cfg = from_dict(PretrainConfig, {
        "recipe": "beit3", "codebook_size": 64, "model": model or {}, **extra,
        "train": {"steps": steps, "micro_batch_size": batch // workers, "num_workers": workers,
                  "zero_stage": zero, "log_every": log_every or steps, "checkpoint_every": steps,
                  "warmup_steps": 1, **device}}, "pretrain")
    return PretrainTask(cfg, shards, visual if augment else None), cfg


def read_rows(task) -> dict[str, list[dict]]:
    import pyarrow.parquet as pq

    from tasks import group_of

    rows: dict[str, list[dict]] = {}
    for e in task.shards.files:
        if e["path"].startswith("train/"):
            for r in pq.read_table(task.shards.path(e["path"])).to_pylist():
                rows.setdefault(group_of(r["modalities"]), []).append(r)
    return rows


def numpy_rows(rs: list[dict]) -> dict:
    """Rows -> the numpy batch Ray Data hands the collator (object arrays for list / binary columns)."""
    import numpy as np

    out = {}
    for k in rs[0]:
        col = np.empty(len(rs), dtype=object)
        for i, r in enumerate(rs):
            col[i] = np.asarray(r[k]) if isinstance(r[k], list) else r[k]
        out[k] = col
    return out


def collated_batches(task, rows, n: int, scale: int = 1) -> list[dict]:
    """``n`` different collated batches of ``task.sizes`` x ``scale`` rows per group, as the training
    collate makes them (augmented, and their views tokenized, when the recipe augments)."""
    sizes = {g: b * scale for g, b in task.sizes.items()}
    return [{g: task.collate_train(g, numpy_rows(rows[g][(i * k) % len(rows[g]):][:k]), 0)
             for g, k in sizes.items()} for i in range(n)]


def plain_loop(task, cfg, steps: int, warmup: int = 3) -> float:
    """Steps/s of the same model, objective and global batch in one process with torch AdamW (on the GPU:
    fp32 weights, forward under bf16 autocast). Each step masks its batch and moves it to the device, as
    the Ray path's workers do."""
    import torch

    task.check()
    gpu = cfg.train.use_gpu
    device = torch.device("cuda" if gpu else "cpu")
    torch.manual_seed(0)
    if not gpu:
        torch.set_num_threads(1)
    model = task.build_model(cfg.train).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=0.05)
    batches = collated_batches(task, read_rows(task), 4, scale=cfg.train.num_workers)

    def sync():
        if gpu:
            torch.cuda.synchronize()

    t = time.perf_counter()
    for step in range(steps + warmup):
        if step == warmup:
            sync()
            t = time.perf_counter()
        b = task.prepare(batches[step % 4], step=step, rank=0, device=device, dtype=torch.float32)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=gpu):
            out = model(b)
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)  # DeepSpeed clips too
        opt.step()
    sync()
    return steps / (time.perf_counter() - t)


def ray_loop(task, cfg, storage: str, name: str) -> dict:
    from pipelines.train.launch import fit

    return fit(task, cfg.train, name=name, storage_path=storage).metrics


# -- model + optimizer state per worker --------------------------------------------------------------------
def state_bytes(engine) -> dict[str, int]:
    """Bytes of the distinct tensor storages a worker holds for the model and the optimizer.

    ``params``: the module's parameters as this rank holds them (ZeRO-3: its partitions, ``ds_tensor``,
    plus parameters under the persistence threshold, which every rank keeps whole). ``master``: weights the
    optimizer updates that are not those storages (ZeRO-1/2 clone the rank's partition). ``moments``: the
    optimizer state (AdamW exp_avg, exp_avg_sq). Storages are counted once, so flat buffers that the
    parameters are views of are not counted twice.
    """
    import torch

    seen: set[int] = set()

    def size(tensors) -> int:
        n = 0
        for t in tensors:
            if not torch.is_tensor(t) or t.numel() == 0:
                continue
            s = t.untyped_storage()
            if s.data_ptr() not in seen:
                seen.add(s.data_ptr())
                n += s.nbytes()
        return n

    params = size(t for p in engine.module.parameters() for t in (p.data, getattr(p, "ds_tensor", None)))
    inner = engine.optimizer
    while not isinstance(inner, torch.optim.Optimizer):  # DeepSpeed's ZeRO wrappers hold the torch one
        inner = inner.optimizer
    master = size(p for g in inner.param_groups for p in g["params"])
    moments = size(v for st in inner.state.values() for v in st.values())
    return {"params": params, "master": master, "moments": moments, "total": params + master + moments}


def state_worker(config: dict) -> None:
    """Ray Train worker: the stage's engine (``build_engine``) on the task's model, two optimizer steps
    (AdamW allocates its moments on the first), then every rank's ``state_bytes`` and peak RSS, which
    rank 0 writes to ``config["out"]`` (one machine: a local file is the simplest channel back)."""
    import resource

    import ray.train
    import torch
    import torch.distributed as dist

    from pipelines.train.engine import build_engine

    task, train, batches = config["task"], config["train"], config["batches"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(1)
    torch.manual_seed(train.seed)
    module = task.build_model(train)
    num_params = sum(p.numel() for p in module.parameters())
    engine = build_engine(module, train, world)
    for step in range(2):
        b = task.prepare(batches[rank], step=step, rank=rank, device=torch.device("cpu"), dtype=torch.float32)
        out = engine(b)
        engine.backward(out["loss"])
        engine.step()
    mine = {**state_bytes(engine), "num_params": num_params,
            "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    every = [None] * world
    dist.all_gather_object(every, mine)
    if rank == 0:
        with open(config["out"], "w") as f:
            json.dump(every, f)


def state_run(task, cfg, rows, storage: str, name: str) -> list[dict]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    task.check()
    batches = collated_batches(task, rows, cfg.train.num_workers)
    out = os.path.join(storage, f"{name}.json")
    TorchTrainer(state_worker,
                 train_loop_config={"task": task, "train": cfg.train, "batches": batches, "out": out},
                 scaling_config=ScalingConfig(num_workers=cfg.train.num_workers,
                                              resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
                 run_config=RunConfig(name=name, storage_path=storage)).fit()
    with open(out) as f:
        return json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20, help="measured steps (the Ray runs train twice as many)")
    ap.add_argument("--batch", type=int, default=None, help="global batch (samples per step, all workers; "
                    "default 12, 96 with --gpu)")
    ap.add_argument("--gpu", action="store_true", help="one GPU: 1 worker against the plain loop on the GPU")
    ap.add_argument("--size", default="base", help="model size with --gpu")
    ap.add_argument("--image-size", type=int, default=224, help="model resolution with --gpu")
    ap.add_argument("--augment", action="store_true", help="the recipe's image augmentation on (see above)")
    args = ap.parse_args()
    args.batch = args.batch or (96 if args.gpu else 12)
    gpu = {"size": args.size, "image_size": args.image_size} if args.gpu else None
    import ray

    from omniway_shard_fixtures import shards_manifest, write_shards
    from omniway_visual_tokenizer_fixture import write_visual_tokenizer

    tmp = tempfile.mkdtemp(prefix="bench-train-")
    # one epoch covers the whole run: at most `batch` rows of a group per step, 2 * steps steps, + margin
    rows_per_group = args.batch * (2 * args.steps + 4)
    root = write_shards(os.path.join(tmp, "shards"), rows_per_group=dict.fromkeys(GROUPS, rows_per_group),
                        val_per_group=dict.fromkeys(GROUPS, 4), rows_per_file=256)
    shards = shards_manifest(root)
    common = {"batch": args.batch, "gpu": gpu, "augment": args.augment,
              "visual": write_visual_tokenizer(os.path.join(tmp, "vqkd")) if args.augment and not gpu else None}

    task, cfg = make_task(shards, steps=args.steps, workers=1, **common)
    where = f"{args.size} model, {args.image_size} px, bf16, 1 GPU" if gpu else "1 process, 1 thread"
    if args.augment:
        where += ", images augmented" + ("" if gpu else " and tokenized") + " before the timing"
    before = plain_loop(task, cfg, args.steps)
    print(f"plain pytorch loop ({where}), global batch {args.batch}: {before:.2f} steps/s", flush=True)
    # Ray starts after the first plain measurement: its worker processes start up in the background
    if gpu:
        ray.init(num_cpus=os.cpu_count(), num_gpus=1, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results = {}
    for workers in (1,) if gpu else (1, 2):
        task, cfg = make_task(shards, steps=2 * args.steps, workers=workers, log_every=args.steps, **common)
        results[workers] = ray_loop(task, cfg, os.path.join(tmp, "ray"), f"w{workers}")
    # measured again after the Ray runs: on a shared machine the load drifts, and the mean of the two
    # brackets the Ray runs better than either
    task, cfg = make_task(shards, steps=args.steps, workers=1, **common)
    after = plain_loop(task, cfg, args.steps)
    plain = (before + after) / 2
    print(f"plain pytorch loop again: {after:.2f} steps/s; mean {plain:.2f}", flush=True)
    for workers, m in results.items():
        sps = 1.0 / m["step_time_s"]
        stage = "zero-2" if workers > 1 else "zero-2 config, run as stage 0 (one worker)"
        each = ("1 GPU, bf16" if gpu else "1 thread each") + (", augmentation on" if args.augment else "")
        print(f"ray train + deepspeed {stage}, {workers} worker(s), {each}: {sps:.2f} steps/s "
              f"({sps / plain:.2f}x plain), data_wait_share {m['data_wait_share']:.4f}, mfu {m['mfu']:.3f}, "
              f"peak {'GPU memory' if gpu else 'RSS'}/worker "
              f"{max(v for k, v in m.items() if k.startswith('memory/')) / 2**20:.0f} MiB", flush=True)
    if gpu or args.augment:
        for workers in results:
            print(f"ray+deepspeed {workers} worker(s) / plain steps/s: "
                  f"{1.0 / results[workers]['step_time_s'] / plain:.2f}")
        print(f"data_wait_share: {results[1]['data_wait_share']:.4f}")
        return

    state = {}
    rows = None
    for zero in (0, 2, 3):
        task, cfg = make_task(shards, steps=2, workers=2, batch=6, zero=zero, model=STATE_MODEL)
        rows = rows or read_rows(task)
        ranks = state_run(task, cfg, rows, os.path.join(tmp, "state"), f"z{zero}")
        state[zero] = max(r["total"] for r in ranks)
        worst = max(ranks, key=lambda r: r["total"])
        mib = lambda b: f"{b / 2**20:.0f} MiB"  # noqa: E731
        print(f"zero-{zero}, 2 workers, {worst['num_params'] / 1e6:.1f}M params: model+optimizer state per worker "
              f"{mib(worst['total'])} ({worst['total'] / worst['num_params']:.1f} B/param: params "
              f"{mib(worst['params'])}, fp32 master copy {mib(worst['master'])}, AdamW moments "
              f"{mib(worst['moments'])}); peak RSS {', '.join(mib(r['rss_peak']) for r in ranks)}", flush=True)
    print(f"zero-2 / zero-0 model+optimizer state per worker: {state[2] / state[0]:.2f}")
    print(f"zero-3 / zero-0 model+optimizer state per worker: {state[3] / state[0]:.2f}")
    print(f"ray+deepspeed 1 worker / plain steps/s: {1.0 / results[1]['step_time_s'] / plain:.2f}")
    print(f"ray+deepspeed 2 workers / plain steps/s: {1.0 / results[2]['step_time_s'] / plain:.2f}")
    print(f"data_wait_share: {results[1]['data_wait_share']:.4f}")


if __name__ == "__main__":
    main()
