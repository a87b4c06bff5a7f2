"""The training step itself, without Ray: a plain PyTorch loop against omniway's DeepSpeed engine
(``pipelines.train.engine.build_engine``, one process) on the same pretraining model and batch.

What each side does per step, same mixed batch already on the device (data loading is not timed here;
``bench_train.py`` measures the whole Ray Train path and its data wait):
- plain: ``torch.optim.AdamW`` on fp32 parameters, forward under ``torch.autocast(bf16)`` when bf16 is on;
- deepspeed: ``deepspeed.initialize`` with omniway's config (ZeRO stage as given, bf16 as DeepSpeed's
  ``torch_autocast`` over fp32 weights, the same AdamW, clipping), ``engine(batch)``, ``backward``, ``step``.

    python benchmarks/bench_engine.py                       # CPU: debug model, fp32
    python benchmarks/bench_engine.py --device cuda         # GPU: base model, bf16

Last line: ``deepspeed_over_plain: <steps/s ratio>`` for the first ZeRO stage listed (target >= 0.87,
i.e. DeepSpeed within 15% of the plain loop).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests", "helpers")]

import torch  # noqa: E402

GROUPS = ("image_text", "text", "image", "audio_text")


def make_batch(spec, recipe, per_group: int, device, seed: int = 0) -> dict:
    from omniway_shard_fixtures import numpy_batch
    from tasks import Collator

    col = Collator(spec, recipe)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for grp in GROUPS:
        t = col.add_masks(grp, col.collate(grp, numpy_batch(grp, per_group, seed=seed)), g)
        out[grp] = {k: v.to(device) for k, v in t.items()}
    return out


def build(size: str, spec, recipe):
    from model import ModelConfig
    from tasks import PretrainModel

    cfg = ModelConfig.from_size(size)
    cfg.vision.img_size = spec.image_size
    cfg.vision.patch_size = spec.patch_size
    return PretrainModel(cfg, recipe, mim_target="pixels")


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, steps: int, warmup: int, device) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps / (time.perf_counter() - t)


def plain(args, spec, recipe, batch, device, bf16: bool) -> float:
    torch.manual_seed(0)
    model = build(args.size, spec, recipe).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.05)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return time_steps(step, args.steps, args.warmup, device)


def with_deepspeed(args, spec, recipe, batch, device, bf16: bool, zero: int,
                   bf16_weights: bool = False) -> tuple[float, int]:
    """(steps/s, the ZeRO stage the engine ran: one worker runs stage 0, see ``engine.zero_stage``).
    bf16 runs as omniway's engine runs it, DeepSpeed's ``torch_autocast`` (fp32 weights, bf16 matmuls);
    ``bf16_weights``: DeepSpeed's bf16 mode instead (bf16 weights and inputs, an fp32 master copy in the
    optimizer), the alternative ``engine.ds_config`` explains the choice against."""
    import pipelines.train.engine as eng
    from pipelines.train.config import TrainConfig

    torch.manual_seed(0)
    model = build(args.size, spec, recipe)
    per_group = next(iter(batch.values()))[next(iter(next(iter(batch.values()))))].shape[0]
    train = TrainConfig(steps=args.steps + args.warmup, micro_batch_size=per_group * len(batch), lr=1e-4,
                        warmup_steps=1, zero_stage=zero, precision="bf16" if bf16 else "fp32",
                        use_gpu=device.type == "cuda", num_workers=1)
    original = eng.ds_config
    if bf16_weights:
        def with_bf16_weights(train, world):
            cfg = original(train, world)
            cfg["bf16"] = {"enabled": True}
            cfg["torch_autocast"] = {"enabled": False}
            return cfg
        eng.ds_config = with_bf16_weights
    try:
        engine = eng.build_engine(model, train, world=1)
    finally:
        eng.ds_config = original
    cast = {k: {n: (v.to(torch.bfloat16) if bf16_weights and v.is_floating_point() else v) for n, v in t.items()}
            for k, t in batch.items()}

    clip = eng.loop_clips(train, 1)  # the loop clips with torch where DeepSpeed's clipping is off

    def step():
        out = engine(cast)
        engine.backward(out["loss"])
        if clip:
            torch.nn.utils.clip_grad_norm_(engine.module.parameters(), train.grad_clip)
        engine.step()

    rate = time_steps(step, args.steps, args.warmup, device)
    ran = engine.zero_optimization_stage()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for _ in range(3):
                step()
            sync(device)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=50))
    del engine
    return rate, ran


def init_process_group(device) -> None:
    import deepspeed

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as sock:  # a free port: another run may hold any fixed one
            sock.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(sock.getsockname()[1])
    for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(k, v)
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", default=None, help="model size (default: base on GPU, debug on CPU)")
    p.add_argument("--per-group", type=int, default=None, help="samples per group (default: 16 GPU, 2 CPU)")
    p.add_argument("--image-size", type=int, default=None, help="default: 224 GPU, 64 CPU")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--zero", default="2,0", help="ZeRO stages to time, comma list (the first gives the ratio)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    p.add_argument("--bf16-weights", action="store_true",
                   help="also time DeepSpeed's bf16 mode (bf16 weights, fp32 master copy; bf16 only)")
    p.add_argument("--profile", action="store_true", help="print the top ops of 3 DeepSpeed steps")
    args = p.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if gpu else "cpu")
    args.size = args.size or ("base" if gpu else "debug")
    args.per_group = args.per_group or (16 if gpu else 2)
    args.steps = args.steps or (20 if gpu else 5)
    image_size = args.image_size or (224 if gpu else 64)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and gpu and torch.cuda.is_bf16_supported())
    if not gpu:
        torch.set_num_threads(os.cpu_count() or 1)

    from tasks import BatchSpec, get_recipe

    recipe = get_recipe("beit3")
    from omniway_shard_fixtures import MELS, RESOLUTION

    # fixture shard rows (RESOLUTION px), resized to the model's resolution by the collator
    spec = BatchSpec(image_size=image_size, shard_resolution=RESOLUTION, patch_size=16, max_text_tokens=64,
                     max_audio_frames=256, n_mels=MELS)
    batch = make_batch(spec, recipe, args.per_group, device)
    init_process_group(device)
    name = torch.cuda.get_device_name(device) if gpu else f"CPU x{torch.get_num_threads()}"
    print(f"device {name}, model {args.size}, image {image_size}px, {args.per_group} samples x "
          f"{len(GROUPS)} groups per step, {'bf16' if bf16 else 'fp32'}, torch {torch.__version__}")
    base = plain(args, spec, recipe, batch, device, bf16)
    print(f"plain loop: {base:.3f} steps/s")
    ratios = []
    for zero in [int(z) for z in args.zero.split(",")]:
        rate, ran = with_deepspeed(args, spec, recipe, batch, device, bf16, zero)
        ratios.append(rate / base)
        runs = f" (one worker: runs as stage {ran})" if ran != zero else ""
        print(f"deepspeed ZeRO-{zero}{runs}: {rate:.3f} steps/s ({rate / base:.3f} x plain)")
        if gpu:
            print(f"  peak GPU memory so far: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
        if args.bf16_weights and bf16:
            rate, _ = with_deepspeed(args, spec, recipe, batch, device, bf16, zero, bf16_weights=True)
            print(f"deepspeed ZeRO-{zero} bf16 weights + fp32 master copy: {rate:.3f} steps/s "
                  f"({rate / base:.3f} x plain)")
    print(f"deepspeed_over_plain: {ratios[0]:.3f}")


if __name__ == "__main__":
    main()
