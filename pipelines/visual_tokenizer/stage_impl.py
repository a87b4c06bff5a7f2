"""Body of the `visual-tokenizer` kind: corpus images -> trained VQ-KD tokenizer + manifest contract.

    corpus train/val images --Ray Data--> pixels at the tokenizer's resolution
    --pipelines.train.fit (Ray Train + DeepSpeed, the one loop)--> export: safetensors + json
    --> tokenizer/ in the output, usage metrics, PNG artifact, manifest extra.encoder for `shards`
"""

from __future__ import annotations

import os
import time

import numpy as np

from pipelines.visual_tokenizer.layout import CONFIG_REL, ENCODER_TARGET, WEIGHTS_REL


def _train_storage(ctx) -> str:
    root = ctx.storage_uri
    if "://" not in root:
        root = os.path.abspath(root)  # Ray Train wants an absolute path or a URI
    return f"{root}/{ctx.pipeline}/{ctx.stage}/_train"


def evaluate(encoder, pixels: np.ndarray, codebook_size: int) -> dict[str, float]:
    """Usage figures of the exported tokenizer over `pixels` (n, 3, R, R) uint8."""
    import torch

    from model.vector_quantizer import NormEMAVectorQuantizer

    ids = encoder(pixels).astype(np.int64)  # (n, N)
    usage, perplexity = NormEMAVectorQuantizer.usage(torch.from_numpy(ids), codebook_size)
    counts = np.bincount(ids.reshape(-1), minlength=codebook_size)
    return {"usage": usage, "perplexity": perplexity, "codes_used": float((counts > 0).sum()),
            "images": float(len(pixels))}, ids, counts


def run_visual_tokenizer(ctx) -> dict[str, float]:
    import torch

    from pipelines.data import schema
    from pipelines.train.launch import fit
    from pipelines.visual_tokenizer.data import image_dataset
    from pipelines.visual_tokenizer.encoder import load_local
    from pipelines.visual_tokenizer.plots import tokenizer_figure
    from pipelines.visual_tokenizer.task import VQKDTask

    cfg = ctx.config
    arch = cfg.tokenizer
    corpus = ctx.input("corpus")
    if corpus.schema_version != schema.CORPUS_SCHEMA_VERSION:
        raise ValueError(f"visual-tokenizer: corpus {corpus.stage!r} has schema {corpus.schema_version!r}; "
                         f"this code reads {schema.CORPUS_SCHEMA_VERSION!r}. Rerun the corpus stage.")
    started = time.time()
    R = arch.image_resolution
    train_ds = image_dataset(corpus, "train", R, cfg.max_images, cfg.shuffle_seed, cfg.cache_decoded)
    val_ds = image_dataset(corpus, "val", R, cfg.val_images, None, True)
    if val_ds is None or val_ds.count() == 0:
        # tiny corpora may have no val image: measure on the first train images (said in the metrics)
        val_ds = train_ds.limit(cfg.val_images or 256).materialize() if train_ds is not None else None
        ctx.extra["val_from_train"] = True
    task = VQKDTask(cfg, train_ds, val_ds)
    print(f"[visual-tokenizer] training {arch.codebook_size} codes x {arch.code_dim} on "
          f"{train_ds.count() if train_ds is not None else 0} images at {R}px / patch {arch.patch_size} "
          f"({cfg.train.steps} steps)", flush=True)
    result = fit(task, cfg.train, name=f"{ctx.stage}-{ctx.key}", storage_path=_train_storage(ctx),
                 tracking_uri=ctx.tracking_uri, run_id=ctx.run_id, fresh=ctx.forced)
    tok_dir = os.path.join(ctx.output_dir, os.path.dirname(WEIGHTS_REL))
    os.makedirs(tok_dir, exist_ok=True)
    result.copy_export(tok_dir)

    # Measure the exported weights exactly as `shards` will load them.
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    encoder = load_local(tok_dir, cfg.encode_batch_size)
    val = np.stack([r["pixels"] for r in val_ds.take(cfg.val_images or 256)])  # (n, 3, R, R)
    metrics, ids, counts = evaluate(encoder, val, arch.codebook_size)
    metrics.update({f"train_{k}": float(v) for k, v in result.metrics.items()
                    if k in ("loss", "rec_loss", "quant_loss", "usage", "perplexity")})
    if "val/rec_loss" in result.metrics:
        metrics["rec_loss"] = float(result.metrics["val/rec_loss"])
    metrics.update({"steps": float(cfg.train.steps), "seconds": round(time.time() - started, 3)})

    if cfg.plot_samples:
        n = min(cfg.plot_samples, len(val))
        recons = None
        if arch.target == "pixels" and not arch.norm_pix:
            rec = encoder.model.reconstruct(torch.from_numpy(val[:n]))  # (n, 3, R, R) in [-1, 1]
            recons = ((rec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
        path = os.path.join(ctx.output_dir, "plots", "visual_tokenizer.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        ctx.log_artifact(tokenizer_figure(val[:n], recons, ids[:n], counts, path))
    loss_curve = os.path.join(tok_dir, "loss_curve.png")
    if os.path.exists(loss_curve):
        ctx.log_artifact(loss_curve)

    ctx.extra.update({
        "encoder": ENCODER_TARGET,
        "visual_tokenizer": {
            "weights": WEIGHTS_REL, "config": CONFIG_REL, "format": "omniway.vqkd/1",
            "image_resolution": R, "patch_size": arch.patch_size, "grid": R // arch.patch_size,
            "num_patches": (R // arch.patch_size) ** 2, "codebook_size": arch.codebook_size,
            "code_dim": arch.code_dim, "ids_dtype": "int16", "encode_batch_size": cfg.encode_batch_size,
        },
    })
    ctx.log_metrics(metrics)
    print(f"[visual-tokenizer] {int(metrics['codes_used'])}/{arch.codebook_size} codes used on "
          f"{int(metrics['images'])} val images (perplexity {metrics['perplexity']:.1f}), "
          f"{metrics['seconds']:.0f}s", flush=True)
    return metrics
