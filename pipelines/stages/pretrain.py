"""Stage kind `pretrain`: shards -> a pretrained multiway model (Ray Train + DeepSpeed ZeRO).

The task (streams, model, validation, export) is `pipelines.train.pretrain_task.PretrainTask`, run by the
one loop in `pipelines.train`. Output: `model.safetensors` (backbone, fp32, model config in the metadata),
`heads.safetensors`, `pretrain.json`, `loss_curve.png`.

What the inputs fix is not configured again: the image resolution comes from the shards, the vocabulary
from their text tokenizer, and with visual tokens as the MIM target the patch grid and the codebook
from their visual tokenizer (filled in when the pipeline loads; a value given that contradicts them is a
load-time error, and the stage checks them against the shards' manifest when it runs).

Inputs: one `shards` stage; and the `visual-tokenizer` stage the shards were tokenized with when the
recipe augments images (`recipe_overrides.augment.enabled`) and the MIM target is visual tokens: the
stored tokens describe the stored image, so the worker tokenizes each augmented view itself (BEiT v2).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from pipelines.registry import stage_kind
from pipelines.train.config import TrainConfig
from pipelines.typed import ConfigError, convert


@dataclass
class PretrainConfig:
    """Config of the `pretrain` kind.

    Args:
        size: named model size (model.SIZES: debug, base, large, giant).
        model: ModelConfig overrides (nested dicts merge: `{vision: {patch_size: 8}}`); checked key by key
            when the pipeline loads. The text vocabulary comes from the shards' text tokenizer, activation
            checkpointing from `train.activation_checkpointing`.
        recipe: objective preset (tasks.RECIPES): `beit3` (masked data modeling), `one-peace` (contrast +
            denoising), `opt` (masked data modeling + OPT's modality-level text reconstruction + matching),
            `omni` (masked data modeling, contrast, denoising).
        recipe_overrides: fields of `tasks.Recipe` to change (`weights`, `mix`, `text_mask`, `augment`...);
            nested settings (`augment: {enabled: true}`) change the preset's key by key.
        mim_target: `tokens` (visual-tokenizer codes), `pixels` (normalised patch pixels), or `auto`
            (tokens when the shards have them).
        codebook_size: visual codes, for the tokens target; default: the shards' visual tokenizer's.
        image_size: model input resolution (shard pixels are resized to it); default: `model.vision.img_size`
            when given, else the shards' image resolution (with the tokens target it must be that).
        max_audio_frames: fbank frames kept per sample; default: what the audio position table covers.
        embed_dim: contrastive embedding width; default: the model width.
        in_memory_mb: train sample groups whose columns are estimated at or under this many MiB are read
            once into Ray's object store before training instead of streamed from the files each epoch:
            a small group in a large corpus would re-read every shard file every few steps. 0 streams all.
        train: the training loop's settings (`pipelines.train.TrainConfig`).
    """

    size: str = "debug"
    model: dict[str, Any] = field(default_factory=dict)
    recipe: str = "omni"
    recipe_overrides: dict[str, Any] = field(default_factory=dict)
    mim_target: Literal["auto", "tokens", "pixels"] = "auto"
    codebook_size: Optional[int] = None
    image_size: Optional[int] = None
    max_audio_frames: Optional[int] = None
    embed_dim: Optional[int] = None
    in_memory_mb: float = 512.0
    train: TrainConfig = field(default_factory=TrainConfig)


def check_recipe(name: str, overrides: dict, where: str):
    """The `tasks.Recipe` named `name` with `overrides`, or a ConfigError naming the key."""
    import typing

    from tasks.recipes import RECIPES, Recipe

    if name not in RECIPES:
        raise ConfigError(f"{where}: with.recipe: unknown recipe {name!r} (known: {', '.join(sorted(RECIPES))})")
    from pipelines.typed import merge, to_dict

    hints = typing.get_type_hints(Recipe)
    known = [f.name for f in dataclasses.fields(Recipe)]
    typed = {}
    for key, value in overrides.items():
        path = f"with.recipe_overrides.{key}"
        if key not in known:
            raise ConfigError(f"{where}: {path}: unknown key (known keys: {', '.join(known)})")
        preset = getattr(RECIPES[name], key)
        if dataclasses.is_dataclass(preset) and isinstance(value, dict):
            value = merge(to_dict(preset), value)  # `augment: {enabled: true}` keeps the preset's other keys
        try:
            typed[key] = convert(hints[key], value, path)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    try:
        return RECIPES[name].merged(**typed)
    except ValueError as e:  # Recipe.__post_init__: unknown objectives or groups
        raise ConfigError(f"{where}: with.recipe_overrides: {e}") from None


def resolve(cfg: PretrainConfig, inputs: dict, where: str) -> tuple[PretrainConfig, dict]:
    """Fill in what the shards fix (resolution; grid and codebook with visual tokens), then check the
    model settings, the recipe and its overrides as the stage will build them."""
    from model.config import SIZES, ModelConfig

    if cfg.size not in SIZES:
        raise ConfigError(f"{where}: with.size: unknown model size {cfg.size!r} "
                          f"(registered: {', '.join(sorted(SIZES))})")
    if "checkpoint_activations" in cfg.model:
        raise ConfigError(f"{where}: with.model.checkpoint_activations: set with.train.activation_checkpointing "
                          "instead (the training loop's one switch for it)")
    text = cfg.model.get("text")
    if isinstance(text, dict) and "vocab_size" in text:
        raise ConfigError(f"{where}: with.model.text.vocab_size: the vocabulary is the shards' text tokenizer's; "
                          "remove this key")
    shards = [s for s in inputs.values() if s.uses == "shards"]
    facts = shards[0].facts if len(shards) == 1 else {}
    model = copy.deepcopy(cfg.model)
    if not isinstance(model.get("vision", {}), dict):
        raise ConfigError(f"{where}: with.model.vision: expected a mapping, got {model['vision']!r}")
    image_size, codebook = cfg.image_size, cfg.codebook_size
    given = model.get("vision", {}).get("img_size")
    if given is not None and image_size is not None and given != image_size:
        raise ConfigError(f"{where}: with.model.vision.img_size: {given} contradicts with.image_size {image_size}; "
                          "set one of them")
    if image_size is None:
        image_size = given if given is not None else facts.get("image_resolution")
    visual = facts.get("visual_tokens")
    if visual and cfg.mim_target != "pixels":
        tok = f"visual tokenizer {visual['stage']!r}"
        R, P, K = visual["image_resolution"], visual["patch_size"], visual["codebook_size"]
        if image_size != R:
            raise ConfigError(f"{where}: with.image_size: {image_size} does not match {tok} (with.tokenizer."
                              f"image_resolution {R}): its ids cover a {R // P}x{R // P} grid of {R}px images. "
                              "Leave image_size unset (it is taken from the shards) or set mim_target: pixels")
        vision = model.setdefault("vision", {})
        if vision.setdefault("patch_size", P) != P:
            raise ConfigError(f"{where}: with.model.vision.patch_size: {vision['patch_size']} does not match "
                              f"{tok} (with.tokenizer.patch_size {P}): the model's patch grid must be the "
                              f"tokenizer's {R // P}x{R // P}. Leave it unset (it is taken from the tokenizer)")
        if codebook is None:
            codebook = K
        elif codebook != K:
            raise ConfigError(f"{where}: with.codebook_size: {codebook} does not match {tok} (with.tokenizer."
                              f"codebook_size {K}). Leave it unset (it is taken from the tokenizer)")
    checked = copy.deepcopy(model)
    if image_size is not None:
        checked["vision"] = {**(checked.get("vision") or {}), "img_size": image_size}
    mc = ModelConfig.from_overrides(cfg.size, checked, f"{where}: with.model")
    if mc.vision.img_size % mc.vision.patch_size:
        raise ConfigError(f"{where}: with.image_size: {mc.vision.img_size} px is not a whole number of "
                          f"{mc.vision.patch_size} px patches")
    recipe = check_recipe(cfg.recipe, cfg.recipe_overrides, where)
    _check_visual_input(inputs, visual, cfg, recipe, where)
    masked = [o for o in ("mim", "denoise") if recipe.uses(o)]
    if mc.vision.abstractor_queries and masked:
        raise ConfigError(f"{where}: with.model.vision.abstractor_queries: the visual abstractor has no per-patch "
                          f"outputs, which {' and '.join(masked)} need: pretrain without it and add it at "
                          "instruction tuning (the instruct stage's abstractor_queries), or drop those objectives")
    resolved = dataclasses.replace(cfg, model=model, image_size=image_size, codebook_size=codebook)
    return resolved, {"model_size": cfg.size, "image_size": mc.vision.img_size,
                      "max_text_tokens": mc.text.max_positions - mc.position_offset}


def _check_visual_input(inputs: dict, visual: dict | None, cfg: PretrainConfig, recipe, where: str) -> None:
    """A visual-tokenizer input is needed exactly when augmented images take visual-token MIM targets, and
    it must be the one the shards' tokens came from."""
    given = [n for n, s in inputs.items() if s.uses == "visual-tokenizer"]
    if len(given) > 1:
        raise ConfigError(f"{where}: needs: at most one `visual-tokenizer` stage (got {given})")
    if given and visual and given[0] != visual.get("stage"):
        raise ConfigError(f"{where}: needs: visual tokenizer {given[0]!r} is not the one the shards were tokenized "
                          f"with ({visual.get('stage')!r}); name that one")
    tokens = visual is not None and cfg.mim_target != "pixels" and recipe.uses("mim")
    if recipe.augment.enabled and tokens and not given:
        raise ConfigError(f"{where}: needs: with.recipe_overrides.augment.enabled augments the training images, whose "
                          f"MIM targets are visual tokens: add the visual-tokenizer stage {visual.get('stage')!r} to "
                          "needs (each augmented view is tokenized in the training worker), or set mim_target: "
                          "pixels")


@stage_kind("pretrain", config=PretrainConfig, version="1", num_cpus=0, resolve=resolve,
            description="masked data modeling + cross-modal / denoising contrast on Ray Train + DeepSpeed")
def pretrain(ctx) -> dict[str, float]:
    from pipelines.train.launch import fit_stage
    from pipelines.train.pretrain_task import PretrainTask

    cfg = ctx.config
    shards = ctx.input("shards")
    visual = ctx.inputs_of_kind("visual-tokenizer")
    task = PretrainTask(cfg, shards, visual[0] if visual else None)
    result = fit_stage(ctx, task, cfg.train)
    ctx.extra.update({"text_tokenizer": (shards.extra.get("tokenizers") or {}).get("text"),"model_config": task.model_config, "recipe": cfg.recipe, "mim_target": task.mim_target,
                      "stream_batch_sizes": task.sizes, "dropped_groups": task.dropped,
                      "shard_counts": task.counts, "in_memory_groups": task.in_memory, "files": result.files})
    metrics = {k: float(v) for k, v in result.metrics.items()
               if isinstance(v, (int, float)) and not k.startswith("memory/")}
    print(f"[pretrain] {int(metrics.get('step', 0))} steps, loss {metrics.get('loss', float('nan')):.4f}; "
          + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.startswith("val/") and "r@1" in k), flush=True)
    return metrics
