"""Stage kind `pretrain`: shards -> a pretrained multiway model (Ray Train + DeepSpeed ZeRO).

Light module; the work is in `pipelines.train.pretrain_task` and the loop in `pipelines.train`.
Output: `model.safetensors` (backbone, fp32, model config in the metadata), `heads.safetensors`,
`pretrain.json`, `loss_curve.png`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from pipelines.registry import stage_kind
from pipelines.train.config import TrainConfig


@dataclass
class PretrainConfig:
    """Config of the `pretrain` kind.

    Args:
        size: named model size (model.SIZES: debug, base, large, giant).
        model: ModelConfig overrides (nested dicts merge: `{vision: {patch_size: 8}}`).
        recipe: objective preset: `beit3` (masked data modeling), `one-peace` (contrast + denoising),
            `omni` (all).
        recipe_overrides: fields of `tasks.Recipe` to change (`weights`, `mix`, `text_mask`...).
        mim_target: `tokens` (visual-tokenizer codes), `pixels` (normalised patch pixels), or `auto`
            (tokens when the shards have them).
        codebook_size: visual codes, for the tokens target.
        image_size: model input resolution (shard pixels are resized to it); default: the size's.
        max_audio_frames: fbank frames kept per sample; default: what the audio position table covers.
        embed_dim: contrastive embedding width; default: the model width.
        in_memory_mb: train sample groups whose columns are estimated at or under this many MiB are read
            once into Ray's object store before training instead of streamed from the files each epoch:
            a small group in a large corpus would re-read every shard file every few steps. 0 streams all.
        train: the training loop's settings (`pipelines.train.TrainConfig`).
    """

    size: str = "debug"
    model: dict[str, Any] = field(default_factory=dict)
    recipe: Literal["beit3", "one-peace", "omni"] = "omni"
    recipe_overrides: dict[str, Any] = field(default_factory=dict)
    mim_target: Literal["auto", "tokens", "pixels"] = "auto"
    codebook_size: int = 8192
    image_size: Optional[int] = None
    max_audio_frames: Optional[int] = None
    embed_dim: Optional[int] = None
    in_memory_mb: float = 512.0
    train: TrainConfig = field(default_factory=TrainConfig)


@stage_kind("pretrain", config=PretrainConfig, version="1", num_cpus=0,
            description="masked data modeling + cross-modal / denoising contrast on Ray Train + DeepSpeed")
def pretrain(ctx) -> dict[str, float]:
    from pipelines.train.pretrain_task import run_pretrain

    return run_pretrain(ctx)
