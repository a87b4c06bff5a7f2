"""The one training loop of omniway: Ray Train V2 ``TorchTrainer`` + DeepSpeed ZeRO, for every training
stage (``pretrain`` and ``visual-tokenizer``; a new training stage plugs in the same way).

A stage supplies a ``TrainTask`` (``pipelines.train.task``) and a ``TrainConfig`` and calls::

    from pipelines.train.launch import fit_stage
    result = fit_stage(ctx, task, cfg.train)   # run (or resume) the stage's run, export into ctx.output_dir
    result.metrics, result.files               # final reported metrics, the task's exported files

The task interface (all a stage writes; the loop never knows which task it runs):

    driver   check()                    validate inputs before any worker starts; raise clear errors
             datasets() -> {name: ray.data.Dataset}
                                        "train-<stream>" split across workers; "val-<stream>" whole to each
    worker   build_model(train) -> nn.Module   forward(batch) -> {"loss": scalar, "<part>": scalar, ...}
             stream_batch_sizes() -> {stream: rows per worker per micro step}
             collate(stream, numpy_rows) -> collated batch        (Ray Data prefetch thread)
             prepare({stream: batch}, step=, rank=, device=, dtype=) -> module input
                                        (masks etc. seeded from step and rank, so resume repeats them)
             batch_stats({stream: batch}, num_params) -> {"samples", "tokens", "flops", <stream>: rows}
             validate(module, {stream: iterable}, step=, device=, dtype=) -> {metric: value}
             export(module, out_dir)     rank 0, parameters gathered: write fp32 weights + configs

What the loop does (``pipelines.train.loop.train_loop``): seeds torch, builds the module,
``deepspeed.initialize`` (ZeRO 0-3, optional CPU optimizer offload, bf16 where the GPU has it (autocast
over fp32 weights, DeepSpeed's ``torch_autocast``) else fp32,
gradient accumulation, clipping, AdamW with decay only on matrices, warmup + cosine as a LambdaLR),
restores ``ray.train.get_checkpoint()`` (engine, optimizer, scheduler, step, stream positions, loss
history), and steps. Every ``log_every`` steps rank 0 logs to MLflow: every loss part (averaged over ranks),
lr, grad norm, samples/s, tokens/s, MFU (task FLOPs / measured or configured peak), data-wait share of step
time, per-rank peak memory (``memory/rank<r>_peak_bytes``), stream composition (``mix/<stream>``). Every
``val_every`` steps and at the end: ``val/<metric>``. Every ``checkpoint_every`` steps and at the end every
rank ``engine.save_checkpoint``s a temp dir and ``ray.train.report``s it (the last K kept); the final one
also holds ``export/`` (task export + loss_curve.png). Resume: the same ``name`` + ``storage_path`` (stage
key under the stage's ``_train`` folder), so rerunning an interrupted stage continues; ``FailureConfig``
restarts a crashed worker group from the last checkpoint. Data position is exact (stream epoch + batch
offset, with ``preserve_order``) for the same worker count.
"""

from pipelines.train.config import TrainConfig
from pipelines.train.task import TrainTask

__all__ = ["TrainConfig", "TrainTask"]
