"""DeepSpeed engine setup inside a worker: config dict, parameter groups, optimizer, warmup + cosine."""

from __future__ import annotations

import math

from pipelines.train.config import TrainConfig

TAG = "state"  # DeepSpeed checkpoint tag: one fixed name, each Ray checkpoint holds one state


def use_bf16(train: TrainConfig) -> bool:
    import torch

    if train.precision == "bf16":
        return True
    if train.precision == "fp32":
        return False
    # auto: bf16 where the hardware does it natively; CPUs run the small models faster in fp32
    return bool(train.use_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def zero_stage(train: TrainConfig, world: int) -> int:
    """The ZeRO stage the engine runs: ``train.zero_stage``, except 0 for a single worker without optimizer
    offload. ZeRO 1-3 split states across workers; alone, a worker's "partition" is everything, and the
    machinery (flat fp32 buffers, per-parameter gradient hooks, bucket copies) is pure cost
    (``benchmarks/bench_engine.py`` compares the stages with a plain loop). Offload keeps the configured
    stage: it needs ZeRO."""
    if world == 1 and not train.offload_optimizer:
        return 0
    return train.zero_stage


def loop_clips(train: TrainConfig, world: int) -> bool:
    """Whether the loop clips gradients itself (``torch.nn.utils.clip_grad_norm_``, one fused norm over all
    gradients) instead of DeepSpeed: one worker at stage 0 (its weights and gradients are fp32, bf16 or
    not: see ``ds_config``). There DeepSpeed's clip is a Python loop of per-parameter norms and multiplies
    plus an all-reduce (a visible share of a small model's step), and it records no gradient norm to log. The
    result is the same: with one rank, the global norm is the local one. (ZeRO 1-3 clip inside their
    optimizers, on their own fp32 partitions.)"""
    return world == 1 and zero_stage(train, world) == 0 and train.grad_clip > 0


# Modules whose weight gradients DeepSpeed may reduce in bf16 under torch_autocast (their matmuls ran in
# bf16 anyway). DeepSpeed matches exact classes, so the model's own Linear (model.ops) is named too.
BF16_SAFE_MODULES = ["torch.nn.Linear", "torch.nn.Conv1d", "torch.nn.Conv2d", "model.ops.Linear"]


def ds_config(train: TrainConfig, world: int) -> dict:
    """The DeepSpeed config for this run (batch sizes count samples per worker)."""
    stage = zero_stage(train, world)
    zero: dict = {"stage": stage}
    if stage == 3:
        zero["stage3_param_persistence_threshold"] = train.zero3_persistence_threshold
    if train.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    cfg = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.micro_batch_size * train.grad_accum * world,
        "gradient_clipping": 0.0 if loop_clips(train, world) else train.grad_clip,
        "zero_optimization": zero,
        # bf16 as torch autocast over fp32 weights (DeepSpeed's torch_autocast), not DeepSpeed's bf16 mode
        # (bf16 weights and gradients, an fp32 master copy its BF16 / ZeRO optimizer steps), which is
        # slower than autocast (`benchmarks/bench_engine.py --device cuda --bf16-weights` times both).
        # Weights, gradients and optimizer states stay fp32 (the master copy is the weights themselves);
        # ZeRO still partitions them, and reduces Linear / Conv gradients in bf16.
        "bf16": {"enabled": False},
        "torch_autocast": {"enabled": use_bf16(train), "dtype": "bfloat16",
                           "lower_precision_safe_modules": BF16_SAFE_MODULES},
        "steps_per_print": 1 << 30,  # progress is ours; keep DeepSpeed quiet
        # a torch AdamW (no JIT-compiled op) is fine under ZeRO; DeepSpeed only warns it is "untested"
        "zero_allow_untested_optimizer": True,
    }
    if train.offload_optimizer:
        # DeepSpeed refuses a client optimizer with offload unless told: by default it wants its
        # DeepSpeedCPUAdam, a C++ op JIT-compiled on first use (a compiler toolchain on every node, ~5 min
        # on 2 cores). We run torch's AdamW with its fused CPU kernel on the offloaded fp32 partitions
        # instead (see ``build_engine``): same update rule as without offload, nothing to compile.
        cfg["zero_force_ds_cpu_optimizer"] = False
    return cfg


def param_groups(module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay matrices and conv kernels; no decay for biases, norms, tokens, scales."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "pos_embed" not in name and "token" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(train: TrainConfig):
    """Multiplier of the peak lr at optimizer step s: linear warmup, then cosine to ``min_lr_ratio``."""
    warm, total, floor = train.warmup_steps, train.steps, train.min_lr_ratio

    def fn(step: int) -> float:
        if step < warm:
            return (step + 1) / max(1, warm)
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


def build_engine(module, train: TrainConfig, world: int):
    """``deepspeed.initialize`` with our optimizer and schedule; returns the engine."""
    import deepspeed
    import torch

    if zero_stage(train, world) == 3 and hasattr(module, "external_parameters"):
        # ZeRO-3 gathers a module's own parameters around its forward and backward; parameters used
        # elsewhere (tied weights, or owned by modules whose outputs its hooks cannot see) are named by the
        # model and gathered with the module it pairs them with
        for owner, param in module.external_parameters():
            deepspeed.zero.register_external_parameter(owner, param)
    groups = param_groups(module, train.weight_decay)
    config = ds_config(train, world)
    # offload: DeepSpeed steps this optimizer on fp32 partitions in CPU memory, where torch's fused
    # (vectorised) AdamW kernel is several times faster than its default foreach one
    fused = {"fused": True} if train.offload_optimizer else {}
    optimizer = torch.optim.AdamW(groups, lr=train.lr, betas=tuple(train.betas), eps=train.eps, **fused)
    engine, _, _, _ = deepspeed.initialize(
        model=module, model_parameters=groups, optimizer=optimizer, config=config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(train)))
    if world == 1 and engine.zero_optimization_stage() == 0:
        # Averaging gradients over one rank is the identity, yet DeepSpeed's stage-0 backward still
        # flattens every gradient into buckets and all-reduces them (a visible share of a small model's step).
        # (ZeRO 1-2 must keep it: their reduction is what fills the optimizer's fp32 partitions.)
        engine.enable_backward_allreduce = False
    return engine
