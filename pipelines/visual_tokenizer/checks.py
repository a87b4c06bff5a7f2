"""Load-time check: a visual tokenizer's resolution and patch grid must match what it feeds.

A tokenizer trained at R px with patch P gives (R/P)^2 ids per image. The `shards` stage stores
pixels at its own `image_resolution`, and the pretraining model predicts one id per patch of its
own grid; any disagreement would either fail deep inside a Ray actor or, worse, pair ids with the
wrong patches. `check_pipeline` compares the configs when the pipeline file is loaded, so the error
names the file, the stage and the key before any work starts.
"""

from __future__ import annotations

from typing import Any

from pipelines.typed import ConfigError
from pipelines.visual_tokenizer.layout import KIND


def _model_sizes() -> dict:
    """`model.config.SIZES` without importing the `model` package (its __init__ imports torch, which
    the planner must not pay for): model/config.py itself imports only the standard library."""
    import importlib.util
    import os
    import sys

    name = "_omniway_model_config_light"
    if name not in sys.modules:
        pkg = importlib.util.find_spec("model")  # locates the package without executing it
        path = os.path.join(list(pkg.submodule_search_locations)[0], "config.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[name].SIZES


def model_vision(config: Any) -> tuple[int, int] | None:
    """(image resolution, patch size) a pretraining-like stage feeds its model, or None when its
    config does not name a model (`size`, `model` overrides, `image_size`, as `pretrain` has)."""
    size = getattr(config, "size", None)
    if not isinstance(size, str):
        return None
    sizes = _model_sizes()
    if size not in sizes:
        return None  # the stage's own config check reports an unknown size
    vision = sizes[size].vision
    overrides = (getattr(config, "model", None) or {}).get("vision") or {}
    patch = overrides.get("patch_size", vision.patch_size)
    # the pretrain stage resizes shard pixels to image_size; without it the model's own img_size
    resolution = getattr(config, "image_size", None) or overrides.get("img_size", vision.img_size)
    return int(resolution), int(patch)


def check_grid(arch: Any, resolution: int | None, patch_size: int | None, *, where: str,
               key: str, tokenizer_stage: str) -> None:
    """Raise ConfigError when `arch` (a VQKDConfig, alias TokenizerArch) disagrees with a consumer.

    Args:
        arch: the tokenizer's architecture config (`image_resolution`, `patch_size`).
        resolution: the consumer's image resolution (None: not set there).
        patch_size: the consumer's patch size (None: not set there).
        where: "FILE: stage 'NAME'" of the consumer, for the message.
        key: the consumer's key path the values come from.
        tokenizer_stage: the tokenizer stage's name.
    """
    R, P = arch.image_resolution, arch.patch_size
    if resolution is not None and resolution != R:
        raise ConfigError(
            f"{where}: {key}: image resolution {resolution} does not match visual tokenizer "
            f"{tokenizer_stage!r} (with.tokenizer.image_resolution {R}); its ids cover a {R // P}x"
            f"{R // P} grid of {R}px images. Set both to the same value.")
    if patch_size is not None and patch_size != P:
        raise ConfigError(
            f"{where}: {key}: patch size {patch_size} does not match visual tokenizer "
            f"{tokenizer_stage!r} (with.tokenizer.patch_size {P}): the model's patch grid must be "
            f"the tokenizer's {R // P}x{R // P}. Set both to the same value.")


def check_pipeline(stages: dict, source: str) -> None:
    """Check every visual tokenizer against the `shards` stages it feeds and their consumers.

    Args:
        stages: stage name -> `pipelines.config.StageSpec` (uses, needs, config).
        source: the pipeline file name, for messages.
    """
    for name, spec in stages.items():
        if spec.uses != "shards":
            continue
        for tok_name in spec.needs:
            tok = stages.get(tok_name)
            if tok is None or tok.uses != KIND:
                continue
            arch = tok.config.tokenizer
            check_grid(arch, spec.config.image_resolution, None, where=f"{source}: stage {name!r}",
                       key="with.image_resolution", tokenizer_stage=tok_name)
            # stages reading these shards: a model they train must use the tokenizer's grid and codebook
            for user_name, user in stages.items():
                if name not in user.needs or getattr(user.config, "mim_target", None) == "pixels":
                    continue
                where = f"{source}: stage {user_name!r}"
                vision = model_vision(user.config)
                if vision is not None:
                    check_grid(arch, vision[0], None, where=where,
                               key="with.image_size (or the size's vision.img_size)", tokenizer_stage=tok_name)
                    check_grid(arch, None, vision[1], where=where,
                               key="with.model.vision.patch_size (or the size's)", tokenizer_stage=tok_name)
                codes = getattr(user.config, "codebook_size", None)
                if isinstance(codes, int) and codes != arch.codebook_size:
                    raise ConfigError(
                        f"{where}: with.codebook_size: {codes} does not match visual tokenizer {tok_name!r} "
                        f"(with.tokenizer.codebook_size {arch.codebook_size}). Set both to the same value.")
