"""The worker function every training stage runs under Ray Train V2 (``train_loop``).

Per worker: seed, build the task's module, ``deepspeed.initialize``, restore the latest Ray Train
checkpoint if any (engine, optimizer, scheduler, step, stream positions), then step: draw one batch from
every training stream, ``engine(batch)`` -> ``engine.backward`` -> ``engine.step`` (DeepSpeed applies
accumulation and clipping; a lone worker at ZeRO stage 0 clips with torch instead, see ``engine.loop_clips``).
Every ``checkpoint_every`` steps and at the end every rank saves its DeepSpeed state to a local directory
and reports it (``ray.train.report`` is a barrier); the final one also holds the task's consolidated
export, written by rank 0.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
import time

from pipelines.train.engine import TAG, build_engine, loop_clips, use_bf16, zero_stage
from pipelines.train.streams import Stream, stream_collate
from pipelines.train.metrics_sender import UNSENT_FILE
from pipelines.train.tracking import RunLogger, loss_curve_png

EXPORT_DIR = "export"  # inside the final checkpoint: what the stage copies to its output
# at the end of a run, how long the metrics sender may drain what the tracking server has not taken yet
TRACKING_DRAIN_S = 30.0
HISTORY_KEEP = 5000


def _measure_peak_flops(device, dtype) -> float:
    """FLOP/s of a square matmul in the dtype the model's matmuls run in (bf16 under autocast) on this
    worker: the MFU denominator when none is configured. The fastest of several timed products: workers
    measure while Ray Data and the other workers start up, and any one product may be interrupted (a mean
    would understate the peak and put MFU above 1)."""
    import torch

    n = 512 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(10):
        _synchronize(device)
        t = time.perf_counter()
        a @ b
        _synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(device) -> float:
    import torch

    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux: KiB


def _mean_across_ranks(values: dict[str, float]) -> dict[str, float]:
    """Average scalar metrics over ranks (keys are the same on every rank: same streams each step)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def _gather_objects(obj) -> list:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _export(task, engine, out_dir: str, rank: int) -> None:
    """Gather full fp32 parameters (ZeRO-3 partitions them) and let rank 0 write the task's export."""
    import contextlib

    import deepspeed

    module = engine.module
    gather = (deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
              if engine.zero_optimization_stage() == 3 else contextlib.nullcontext())
    with gather:
        if rank == 0:
            os.makedirs(out_dir, exist_ok=True)
            task.export(module, out_dir)


def train_loop(config: dict) -> None:
    """Ray Train worker function. ``config``: ``task`` (a ``TrainTask``), ``train`` (``TrainConfig``),
    ``tracking_uri`` and ``run_id`` (MLflow; rank 0 logs there), ``spool_dir`` (where rank 0's metrics
    sender spools, the same for every worker group of the run)."""
    task, train = config["task"], config["train"]
    if not train.use_gpu:
        # the loop runs on the CPU: tell DeepSpeed so, rather than have it look for a GPU and warn that it
        # fell back to the CPU (a user's own DS_ACCELERATOR wins)
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed  # noqa: F401 - imported in the worker, never in the driver
    import ray.train
    import torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if train.use_gpu:
        from ray.train.torch import get_device

        device = get_device()
    else:
        device = torch.device("cpu")
        # as many threads as the worker reserved CPUs: oversubscription slows every rank
        torch.set_num_threads(max(1, int(round(train.cpus_per_worker))))
    # inputs stay fp32: bf16 runs as autocast over fp32 weights (engine.ds_config), in the engine's forward
    # and around validation here
    dtype, bf16 = torch.float32, use_bf16(train)

    torch.manual_seed(train.seed)  # identical init on every rank
    module = task.build_model(train)
    num_params = sum(p.numel() for p in module.parameters())
    engine = build_engine(module, train, world)
    if rank == 0 and zero_stage(train, world) != train.zero_stage:
        # sys.stdout, not print(): Ray Train patches print() to also log, and the line showed twice
        sys.stdout.write(f"[train] 1 worker: ZeRO-{train.zero_stage} has nothing to partition, "
                         "DeepSpeed runs stage 0\n")

    state = {"step": 0, "streams": {}, "history": [], "restarts": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            _, client = engine.load_checkpoint(d, tag=TAG)
        state = client["omniway"]
        state["restarts"] = state.get("restarts", 0) + 1
        if rank == 0:
            print(f"[train] resumed from step {state['step']} ({checkpoint.path})", flush=True)

    sizes = task.stream_batch_sizes()
    streams = {name: Stream(ray.train.get_dataset_shard(f"train-{name}"), name, bs,
                            stream_collate(task, name), train.prefetch_batches,
                            state["streams"].get(name))
               for name, bs in sizes.items()}
    val_names = [n for n in config.get("dataset_names", []) if n.startswith("val-")]
    # the spool is the stage's (``fit``'s spool_dir): a rank 0 restarted after a death takes over what the
    # dead one logged and had not sent
    logger = (RunLogger(config.get("tracking_uri"), config.get("run_id"), train.steps, config.get("spool_dir"))
              if rank == 0 else None)
    # CPUs without bf16 GEMMs run autocast's matmuls through the fp32 BLAS (model.ops.Linear)
    peak = train.peak_flops_per_worker or _measure_peak_flops(
        device, torch.bfloat16 if bf16 and device.type == "cuda" else torch.float32)

    if logger is not None:
        logger.begin(state["step"])  # the progress lines' ETA counts from here
    clip, own_norm = loop_clips(train, world), None  # see engine.loop_clips
    window = {"wait": 0.0, "time": 0.0, "samples": 0.0, "tokens": 0.0, "flops": 0.0, "n": 0}
    sums: dict = {}  # loss parts (device tensors) and mix counts (floats), summed over the window
    step = state["step"]
    end = train.stop_after if 0 < train.stop_after < train.steps else train.steps
    while step < end:
        t_step = time.perf_counter()
        for micro in range(train.grad_accum):
            t0 = time.perf_counter()
            raw = {name: next(s) for name, s in streams.items()}
            window["wait"] += time.perf_counter() - t0
            batch = task.prepare(raw, step=step * train.grad_accum + micro, rank=rank, device=device, dtype=dtype)
            out = engine(batch)
            engine.backward(out["loss"])
            if clip and engine.is_gradient_accumulation_boundary():  # before step(): it counts the micro step
                own_norm = torch.nn.utils.clip_grad_norm_(engine.module.parameters(), train.grad_clip)
            engine.step()
            stats = task.batch_stats(raw, num_params)  # from the collated host batch: no device sync
            for k in ("samples", "tokens", "flops"):
                window[k] += float(stats.get(k, 0.0))
            for k, v in out.items():
                # summed on the device: a float() here would wait for the GPU every step, and the next
                # step's host work (masks, copies, kernel launches) could no longer overlap this one's
                part = v.detach().float() / train.grad_accum
                sums[k] = sums[k] + part if k in sums else part
            for k, v in stats.items():
                if k not in ("samples", "tokens", "flops"):
                    sums[f"mix/{k}"] = sums.get(f"mix/{k}", 0.0) + float(v) / train.grad_accum
        step += 1
        last = step == train.steps
        log_now = step % train.log_every == 0 or step == end
        val_now = bool(val_names) and ((train.val_every and step % train.val_every == 0) or last)
        checkpoint_now = step % train.checkpoint_every == 0 or step == end
        if log_now or val_now or checkpoint_now:
            _synchronize(device)  # steps queue asynchronously: the window's time must cover their device work
        window["time"] += time.perf_counter() - t_step
        window["n"] += 1
        state["step"] = step
        state["streams"] = {name: s.position() for name, s in streams.items()}

        metrics: dict[str, float] = {}
        if log_now:
            n, secs = window["n"], max(window["time"], 1e-9)
            local = {k: float(v) / n for k, v in sums.items()}
            local.update({"samples_per_s": window["samples"] / secs * world,
                          "tokens_per_s": window["tokens"] / secs * world,
                          "mfu": window["flops"] / secs / peak,
                          "data_wait_share": window["wait"] / secs,
                          "step_time_s": secs / n})
            metrics = _mean_across_ranks(local)
            metrics["samples_per_s"] = local["samples_per_s"]  # already the global rate
            memory = _gather_objects(_peak_memory(device))
            metrics.update({f"memory/rank{r}_peak_bytes": m for r, m in enumerate(memory)})
            metrics["lr"] = float(engine.get_lr()[0])
            norm = own_norm if clip else engine.get_global_grad_norm()
            if norm is not None:
                metrics["grad_norm"] = float(norm)
            metrics["step"] = float(step)
            state["history"] = (state["history"] + [[step, metrics["loss"]]])[-HISTORY_KEEP:]
            window = {k: 0.0 if k != "n" else 0 for k in window}
            sums = {}
        if val_now:
            module.eval()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                val = task.validate(engine.module, {n[len("val-"):]: _val_iter(ray.train.get_dataset_shard(n), task, n)
                                                    for n in val_names}, step=step, device=device, dtype=dtype)
            module.train()
            metrics.update({f"val/{k}": v for k, v in val.items()})
            if logger is not None:
                for name, columns in task.validation_tables().items():
                    logger.table(columns, f"{name}_step{step}.json")
        if logger is not None and metrics:
            logger.log(metrics, step)
            logger.progress(step, metrics)
        if checkpoint_now:
            _save_and_report(task, engine, train, state, metrics, rank, final=last, logger=logger)


def _val_iter(shard, task, name: str):
    stream = name[len("val-"):]
    return shard.iter_torch_batches(batch_size=64, collate_fn=stream_collate(task, stream), drop_last=False)


def _save_and_report(task, engine, train, state, metrics, rank: int, *, final: bool, logger) -> None:
    import ray.train
    from ray.train import Checkpoint

    tmp = tempfile.mkdtemp(prefix="omniway-ckpt-")
    engine.save_checkpoint(tmp, tag=TAG, client_state={"omniway": state})  # every rank: ZeRO shards
    if final:
        out = os.path.join(tmp, EXPORT_DIR)
        _export(task, engine, out, rank)
        if rank == 0:
            png = loss_curve_png(state["history"], os.path.join(out, "loss_curve.png"))
            if png and logger is not None:
                logger.artifact(png)
            if logger is not None:  # the run ends here: what the server did not take stays in the output
                metrics["tracking/unsent"] = float(logger.close(TRACKING_DRAIN_S, os.path.join(out, UNSENT_FILE)))
    report = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    report.update({"step": state["step"], "restarts": state.get("restarts", 0)})
    ray.train.report(report, checkpoint=Checkpoint.from_directory(tmp))
    shutil.rmtree(tmp, ignore_errors=True)
