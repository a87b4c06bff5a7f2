"""Stage kind `visual-tokenizer`: corpus images -> a trained VQ-KD visual tokenizer (BEiT v2 style).

    corpus train/val images --Ray Data--> pixels at the tokenizer's resolution
    --pipelines.train (Ray Train + DeepSpeed, the one loop)--> export: safetensors + json
    --> tokenizer/ in the output, usage metrics, PNG artifact, manifest extra.encoder for `shards`

Its architecture is the source of truth for the image resolution, patch grid and codebook of the stages
below it: `shards` and `pretrain` take them from here (`facts`) instead of stating them again.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Optional

from model.vqkd_config import VQKDConfig
from pipelines.registry import stage_kind
from pipelines.train.config import TrainConfig
from pipelines.typed import ConfigError

KIND = "visual-tokenizer"


@dataclass
class VisualTokenizerConfig:
    """Config of the `visual-tokenizer` kind.

    Args:
        tokenizer: architecture (`model.vqkd_config.VQKDConfig`); its resolution, patch grid and codebook
            are what the shards and the pretraining model use.
        train: the shared training loop's settings (steps, micro_batch_size = images per worker
            per step, lr, workers...).
        max_images: at most this many train images (0 = all), in corpus order.
        val_images: at most this many val images for usage / reconstruction metrics (0 = all).
        cache_decoded: decode and resize the images once and keep the pixels in Ray's object store
            (small corpora); false re-decodes every epoch (streaming, for corpora that do not fit).
        shuffle_seed: the train images are shuffled once with this seed (None: corpus order).
        teacher: "module:function" returning a frozen torch module (float pixels (B, 3, R, R) in
            [-1, 1] -> (B, N, target_dim)); required when tokenizer.target is "teacher".
        encode_batch_size: images per forward when tokenizing (shards, validation).
        plot_samples: images in the reconstruction artifact (0 = none).
    """

    tokenizer: VQKDConfig = field(default_factory=VQKDConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    max_images: int = 0
    val_images: int = 256
    cache_decoded: bool = True
    shuffle_seed: Optional[int] = 0
    teacher: Optional[str] = None
    encode_batch_size: int = 32
    plot_samples: int = 8

    def __post_init__(self) -> None:
        if self.tokenizer.target == "teacher" and not self.teacher:
            raise ValueError("tokenizer.target is 'teacher': set teacher to 'module:function'")
        if self.teacher and ":" not in self.teacher:
            raise ValueError(f"teacher {self.teacher!r}: expected 'module:function'")


def resolve(cfg: VisualTokenizerConfig, inputs: dict, where: str) -> tuple[VisualTokenizerConfig, dict]:
    """Facts for the stages below: the grid and codebook its ids will have (as `manifest_facts`)."""
    if not any(s.uses == "corpus" for s in inputs.values()):
        raise ConfigError(f"{where}: needs: a visual tokenizer trains on a `corpus` stage's images; name one")
    arch = cfg.tokenizer
    return cfg, {"visual_tokens": {"image_resolution": arch.image_resolution, "patch_size": arch.patch_size,
                                   "codebook_size": arch.codebook_size}}


def manifest_facts(manifest) -> dict:
    """The same facts as `resolve`'s, from a committed visual-tokenizer manifest."""
    info = manifest.extra["visual_tokenizer"]
    return {"stage": manifest.stage, "image_resolution": info["image_resolution"],
            "patch_size": info["patch_size"], "codebook_size": info["codebook_size"]}


@stage_kind(KIND, config=VisualTokenizerConfig, version="1", num_cpus=0, resolve=resolve,
            description="VQ-KD visual tokenizer trained on the corpus images (ids for shards)")
def visual_tokenizer(ctx) -> dict[str, float]:
    import numpy as np
    import torch

    from pipelines.data import schema
    from pipelines.train.launch import fit_stage
    from pipelines.visual_tokenizer.data import image_dataset
    from pipelines.visual_tokenizer.encoder import ENCODER_TARGET, CONFIG_REL, WEIGHTS_REL, code_usage, load_local
    from pipelines.visual_tokenizer.plots import tokenizer_figure
    from pipelines.data.raycompat import ensure_ray, wait_for_free_cpu
    from pipelines.visual_tokenizer.task import VQKDTask

    cfg = ctx.config
    arch = cfg.tokenizer
    corpus = ctx.input("corpus")
    schema.check_corpus(corpus, ctx.stage)
    started = time.time()
    wait_for_free_cpu(ensure_ray(), ctx.stage)  # image_dataset materializes: a Ray Data job
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
    tok_dir = os.path.join(ctx.output_dir, os.path.dirname(WEIGHTS_REL))
    result = fit_stage(ctx, task, cfg.train, export_to=tok_dir)

    # Measure the exported weights exactly as `shards` will load them.
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    encoder = load_local(tok_dir, cfg.encode_batch_size)
    val = np.stack([r["pixels"] for r in val_ds.take(cfg.val_images or 256)])  # (n, 3, R, R)
    metrics, ids, counts = code_usage(encoder, val, arch.codebook_size)
    metrics.update({f"train_{k}": float(v) for k, v in result.metrics.items()
                    if k in ("loss", "rec_loss", "quant_loss", "usage", "perplexity")})
    if "val/rec_loss" in result.metrics:
        metrics["rec_loss"] = float(result.metrics["val/rec_loss"])
    metrics.update({"steps": float(cfg.train.steps), "seconds": round(time.time() - started, 3)})

    if cfg.plot_samples:
        n = min(cfg.plot_samples, len(val))
        recons = None
        if arch.target == "pixels" and not arch.norm_pix:
            from model.pixels import to_uint8_pixels

            recons = to_uint8_pixels(encoder.model.reconstruct(torch.from_numpy(val[:n]))).numpy()
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
    print(f"[visual-tokenizer] {int(metrics['codes_used'])}/{arch.codebook_size} codes used on "
          f"{int(metrics['images'])} val images (perplexity {metrics['perplexity']:.1f}), "
          f"{metrics['seconds']:.0f}s", flush=True)
    return metrics
