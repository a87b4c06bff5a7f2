"""``TrainConfig``: the training-loop settings every training stage nests under ``train:``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class TrainConfig:
    """Settings of the one training loop (Ray Train V2 + DeepSpeed).

    Args:
        steps: optimizer steps in total (a resumed run continues up to this).
        micro_batch_size: samples per worker per micro step (a task may split them among streams).
        grad_accum: micro steps per optimizer step.
        lr: peak learning rate (after warmup).
        min_lr_ratio: the cosine ends at ``lr * min_lr_ratio``.
        warmup_steps: linear warmup steps.
        weight_decay: AdamW decay of matrices (biases, norms, embeddings-like vectors get none).
        betas: AdamW betas (BEiT-3 / ONE-PEACE: 0.9, 0.98).
        eps: AdamW epsilon.
        grad_clip: global gradient-norm clip (0 = off).
        zero_stage: DeepSpeed ZeRO stage 0-3 (a single worker without offload runs 0: nothing to partition).
        offload_optimizer: ZeRO optimizer states (and the optimizer step) on CPU memory: torch's
            fused AdamW on the fp32 partitions, nothing JIT-compiled.
        precision: ``auto`` (bf16 where the GPU supports it, else fp32), ``bf16`` or ``fp32``.
        activation_checkpointing: recompute blocks in backward (sets the model's flag; the one switch for it).
        num_workers: Ray Train workers.
        cpus_per_worker: CPUs each worker reserves (leave some to Ray Data on small machines).
        use_gpu: one GPU per worker.
        checkpoint_every: steps between checkpoints (a checkpoint is always written at the end).
        keep_checkpoints: checkpoints kept (CheckpointConfig.num_to_keep).
        max_failures: worker-group restarts from the last checkpoint before the run fails.
        val_every: steps between validations (0: only at the end).
        log_every: steps between metric logs (rank 0 to MLflow) and progress lines.
        seed: model init and mask seed.
        peak_flops_per_worker: for MFU; 0 measures a matmul at start.
        prefetch_batches: Ray Data batches prefetched per stream.
        stop_after: end this invocation after this many steps in total (0: run to ``steps``), with a
            checkpoint; a later run with the same config resumes (time-boxed or preemptible slots).
        zero3_persistence_threshold: ZeRO-3 keeps parameters of at most this many elements whole on every
            rank instead of partitioning them (DeepSpeed's ``stage3_param_persistence_threshold``; its
            default 1e5 keeps every parameter of a small model whole; 0 partitions all).
    """

    steps: int = 100
    micro_batch_size: int = 24
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.01
    warmup_steps: int = 10
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    grad_clip: float = 3.0
    zero_stage: int = 2
    offload_optimizer: bool = False
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    activation_checkpointing: bool = False
    num_workers: int = 2
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    max_failures: int = 1
    val_every: int = 0
    log_every: int = 10
    seed: int = 0
    peak_flops_per_worker: float = 0.0
    prefetch_batches: int = 2
    stop_after: int = 0
    zero3_persistence_threshold: int = 100_000

    def __post_init__(self) -> None:
        if not 0 <= self.zero_stage <= 3:
            raise ValueError(f"zero_stage must be 0-3, got {self.zero_stage}")
        if self.zero3_persistence_threshold < 0:
            raise ValueError(f"zero3_persistence_threshold must be >= 0, got {self.zero3_persistence_threshold}")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage >= 1")
        if len(self.betas) != 2:
            raise ValueError(f"betas must have two values, got {self.betas}")
        for name in ("steps", "micro_batch_size", "grad_accum", "num_workers", "checkpoint_every",
                     "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
