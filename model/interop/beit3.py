"""torchscale / unilm BEiT-3 checkpoints <-> omniway state dicts. All key mapping lives here.

torchscale's BEiT-3 duplicates every sub-module in a ``MultiwayNetwork`` with branch ``A`` = vision and
``B`` = text; unilm's wrappers put the backbone under ``beit3.`` and the file holds the weights under
``model``. That is omniway's ``all`` policy with modalities ``vision`` then ``text``, sub-LN on, no fusion
experts, no layer scale, no relative position bias. omniway fuses q/k/v into one matmul (``qkv``); the
mapping concatenates and splits those rows (q, then k, then v).

Entry points:
    beit3_config(checkpoint, heads, **overrides)   -> ModelConfig matching the checkpoint's shapes
    beit3_to_omniway(checkpoint, config)            -> (omniway state dict, keys left unmapped)
    omniway_to_beit3(state_dict, config, prefix)    -> torchscale state dict (``prefix`` + keys)
    load_beit3(model, checkpoint, ...)              -> strict load into a MultiwayModel
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from ..checkpoint import CheckpointKeyError, check_keys
from ..config import ModelConfig, TextConfig, VisionConfig
from ..modalities import interpolate_positions

BRANCH = {"vision": "A", "text": "B"}  # torchscale MultiwayNetwork branches
PREFIX = "beit3."


def unwrap(checkpoint: Mapping) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Return (backbone keys without the ``beit3.`` prefix, other keys) of a torchscale/unilm checkpoint.

    Accepts the saved file's dict (weights under ``model``/``module``) or a bare state dict, with or without
    the ``beit3.`` prefix (a torchscale ``BEiT3`` module's own ``state_dict()`` has none).
    """
    for key in ("model", "module"):
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            checkpoint = checkpoint[key]
            break
    sd = dict(checkpoint)
    if any(k.startswith(PREFIX) for k in sd):
        backbone = {k[len(PREFIX):]: v for k, v in sd.items() if k.startswith(PREFIX)}
        others = {k: v for k, v in sd.items() if not k.startswith(PREFIX)}
        return backbone, others
    return sd, {}


def beit3_config(checkpoint: Mapping, heads: int | None = None, **overrides) -> ModelConfig:
    """A ``ModelConfig`` whose shapes match the checkpoint (heads cannot be read from weights: default
    ``dim // 64``, as in every released BEiT-3 size)."""
    sd, _ = unwrap(checkpoint)
    dim = sd["text_embed.weight"].shape[1]
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers."))
    patch = sd["vision_embed.proj.weight"].shape[-1]
    grid = math.isqrt(sd["encoder.embed_positions.A.weight"].shape[0] - 3)  # 2 offset rows + CLS
    base = dict(
        dim=dim,
        layers=layers,
        heads=heads or dim // 64,
        ffn_dim=sd["encoder.layers.0.ffn.A.fc1.weight"].shape[0],
        modalities=("vision", "text"),
        expert_policy="all",
        fusion_layers=0,
        subln="encoder.layers.0.self_attn.inner_attn_ln.A.weight" in sd,
        vision=VisionConfig(img_size=grid * patch, patch_size=patch, in_chans=sd["vision_embed.proj.weight"].shape[1]),
        text=TextConfig(
            vocab_size=sd["text_embed.weight"].shape[0],
            max_positions=sd["encoder.embed_positions.B.weight"].shape[0],
        ),
    )
    base.update(overrides)
    return ModelConfig(**base)


def _check_compatible(config: ModelConfig) -> None:
    problems = []
    if config.expert_policy != "all":
        problems.append(f"expert_policy={config.expert_policy!r} (needs 'all')")
    if config.fusion_layers:
        problems.append(f"fusion_layers={config.fusion_layers} (needs 0)")
    if not config.subln:
        problems.append("subln=False (released BEiT-3 uses sub-LN)")
    if config.layer_scale or config.rel_pos_buckets:
        problems.append("layer_scale / relative position bias (BEiT-3 has neither)")
    if config.vision.stem != "conv":
        problems.append(f"vision.stem={config.vision.stem!r} (needs 'conv')")
    if config.vision.abstractor_queries:
        problems.append("vision.abstractor_queries (BEiT-3 has no visual abstractor)")
    if config.position_offset != 2:
        problems.append(f"position_offset={config.position_offset} (torchscale uses 2)")
    if "vision" not in config.modalities or "text" not in config.modalities:
        problems.append(f"modalities={config.modalities} (needs vision and text)")
    if problems:
        raise ValueError("config cannot hold a torchscale BEiT-3 checkpoint: " + "; ".join(problems))


def _pairs(config: ModelConfig) -> list[tuple[str, list[str], int]]:
    """(omniway key, [torchscale keys, concatenated on dim 0], expected split count) for every tensor."""
    pairs: list[tuple[str, list[str], int]] = [
        ("adapters.vision.stem.proj.weight", ["vision_embed.proj.weight"], 1),
        ("adapters.vision.stem.proj.bias", ["vision_embed.proj.bias"], 1),
        ("adapters.vision.cls_token", ["vision_embed.cls_token"], 1),
        ("adapters.vision.mask_token", ["vision_embed.mask_token"], 1),
        ("adapters.vision.pos_embed", ["encoder.embed_positions.A.weight"], 1),
        ("adapters.text.embed.weight", ["text_embed.weight"], 1),
        ("adapters.text.pos_embed", ["encoder.embed_positions.B.weight"], 1),
    ]
    proj_groups = ["qkv"] if config.fused_qkv else ["q", "k", "v"]
    for m, b in BRANCH.items():
        for p in ("weight", "bias"):
            pairs.append((f"encoder.final_norm.{m}.{p}", [f"encoder.layer_norm.{b}.{p}"], 1))
        for i in range(config.layers):
            o, t = f"encoder.blocks.{i}", f"encoder.layers.{i}"
            for p in ("weight", "bias"):
                for group in proj_groups:
                    pairs.append((f"{o}.attn.{group}.{m}.{p}", [f"{t}.self_attn.{c}_proj.{b}.{p}" for c in group], len(group)))
                pairs += [
                    (f"{o}.attn_norm.{m}.{p}", [f"{t}.self_attn_layer_norm.{b}.{p}"], 1),
                    (f"{o}.attn.sub_norm.{m}.{p}", [f"{t}.self_attn.inner_attn_ln.{b}.{p}"], 1),
                    (f"{o}.attn.out.{m}.{p}", [f"{t}.self_attn.out_proj.{b}.{p}"], 1),
                    (f"{o}.ffn_norm.{m}.{p}", [f"{t}.final_layer_norm.{b}.{p}"], 1),
                    (f"{o}.ffn.{m}.fc1.{p}", [f"{t}.ffn.{b}.fc1.{p}"], 1),
                    (f"{o}.ffn.{m}.sub_norm.{p}", [f"{t}.ffn.{b}.ffn_layernorm.{p}"], 1),
                    (f"{o}.ffn.{m}.fc2.{p}", [f"{t}.ffn.{b}.fc2.{p}"], 1),
                ]
    return pairs


def beit3_to_omniway(
    checkpoint: Mapping, config: ModelConfig
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Map a torchscale/unilm BEiT-3 checkpoint to omniway keys.

    Returns (mapped state dict, leftovers): leftovers are the checkpoint's keys no omniway tensor takes
    (unilm task heads, an output projection...). Vision positions are resized to ``config.vision``'s grid.
    Raises ``CheckpointKeyError`` listing every BEiT-3 key the config needs but the checkpoint lacks.
    """
    _check_compatible(config)
    sd, others = unwrap(checkpoint)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for ours, theirs, _ in _pairs(config):
        absent = [k for k in theirs if k not in sd]
        if absent:
            missing += absent
            continue
        used.update(theirs)
        out[ours] = sd[theirs[0]] if len(theirs) == 1 else torch.cat([sd[k] for k in theirs], dim=0)
    if missing:
        raise CheckpointKeyError(sorted(missing), [], [], where="BEiT-3 checkpoint lacks keys the config needs")
    pos = out["adapters.vision.pos_embed"]
    old_grid = math.isqrt(pos.shape[0] - config.position_offset - 1)
    out["adapters.vision.pos_embed"] = interpolate_positions(pos, old_grid, config.vision.grid, config.position_offset + 1)
    leftovers = {k: v for k, v in sd.items() if k not in used}
    leftovers.update(others)
    return out, leftovers


def omniway_to_beit3(
    state_dict: Mapping[str, torch.Tensor], config: ModelConfig, prefix: str = PREFIX
) -> dict[str, torch.Tensor]:
    """Map omniway weights back to torchscale keys (``prefix`` prepended; ``""`` for a bare ``BEiT3``
    module). Weights of other modalities (audio, registered ones) have no BEiT-3 home and are not written."""
    _check_compatible(config)
    out: dict[str, torch.Tensor] = {}
    for ours, theirs, n in _pairs(config):
        if ours not in state_dict:
            raise CheckpointKeyError([ours], [], [], where="omniway state dict")
        for key, chunk in zip(theirs, torch.chunk(state_dict[ours], n, dim=0)):
            out[prefix + key] = chunk.clone()
    return out


def encoder_config_args(config: ModelConfig) -> dict:
    """``torchscale.architecture.config.EncoderConfig`` keyword arguments of the ``BEiT3`` matching
    ``config`` (the same arguments unilm's BEiT-3 wrappers pass)."""
    return {
        "encoder_embed_dim": config.dim, "encoder_attention_heads": config.heads,
        "encoder_ffn_embed_dim": config.ffn_dim, "encoder_layers": config.layers,
        "vocab_size": config.text.vocab_size, "max_source_positions": config.text.max_positions,
        "img_size": config.vision.img_size, "patch_size": config.vision.patch_size,
        "in_chans": config.vision.in_chans, "layernorm_eps": config.norm_eps, "drop_path_rate": config.drop_path,
        "multiway": True, "subln": True, "layernorm_embedding": False, "normalize_output": True,
        "no_output_layer": True,
    }


def _other_modality_keys(model_keys: list[str], modalities: tuple[str, ...]) -> set[str]:
    # keys owned by an adapter or an expert of a modality torchscale's BEiT-3 does not have
    others = [m for m in modalities if m not in BRANCH]
    keys = set()
    for k in model_keys:
        parts = k.split(".")
        if any(m in parts for m in others):
            keys.add(k)
    return keys


def load_beit3(
    model: torch.nn.Module,
    checkpoint: Mapping,
    *,
    ignore_extra: bool = False,
    keep_other_modalities: bool = False,
) -> dict[str, torch.Tensor]:
    """Load a BEiT-3 checkpoint into a ``MultiwayModel`` with nothing silently skipped.

    Args:
        model: the omniway model (its ``config`` must satisfy the BEiT-3 layout).
        checkpoint: the torch-loaded file, or a state dict.
        ignore_extra: accept checkpoint keys that map nowhere (unilm task heads); they are returned.
        keep_other_modalities: keep this model's current weights for modalities BEiT-3 lacks (audio);
            otherwise such a model is an error.

    Returns:
        the checkpoint keys that were not loaded (empty unless ``ignore_extra``).
    """
    mapped, leftovers = beit3_to_omniway(checkpoint, model.config)
    if leftovers and not ignore_extra:
        raise CheckpointKeyError([], sorted(leftovers), [], where="BEiT-3 keys with no omniway home; pass ignore_extra=True")
    if keep_other_modalities:
        current = model.state_dict()
        for k in _other_modality_keys(list(current), model.config.modalities):
            mapped.setdefault(k, current[k])
    check_keys(model, mapped, where="BEiT-3 checkpoint")
    model.load_state_dict(mapped, strict=True)
    return leftovers
