"""omniway.tasks: what is learned and measured (imports model, torch, numpy only).

Public API::

    from tasks import PretrainModel, get_recipe, RECIPES, GROUPS, Collator, BatchSpec

    recipe = get_recipe("omni")                          # presets: beit3, one-peace, omni
    model = PretrainModel(ModelConfig.from_size("debug"), recipe, mim_target="pixels")
    collator = Collator(BatchSpec(...), recipe)
    t = collator.add_masks("image_text", collator.collate("image_text", numpy_rows), generator)
    out = model({"image_text": t})                       # {"loss", "mlm", "mlm/image_text", ...}

Modules:
    masking     random_token_mask, block_mask (BEiT block-wise), span_mask (1-D audio blocks)
    losses      gather_with_grad, contrastive_loss, token_infonce
    objectives  MaskedLanguageModeling, MaskedImageModeling, MaskedAudioModeling, CrossModalContrast,
                DenoisingContrast -- each an nn.Module owning its head, returning {"loss", parts}
    recipes     Recipe, RECIPES, get_recipe, GROUPS, group_of, group_batch_sizes
    batching    BatchSpec, Collator (shard rows -> tensors, masks from an explicit generator)
    pretrain    PretrainModel (backbone + heads, routes each group to its objectives)
    metrics     recall_at_k, retrieval_metrics
"""

# Names -> the submodule defining them, imported on first use (PEP 562): `tasks.recipes` needs only the
# standard library, so the pipeline planner checks recipe names and overrides without importing torch.
_EXPORTS = {
    "batching": ("BatchSpec", "Collator"),
    "metrics": ("recall_at_k", "retrieval_metrics"),
    "pretrain": ("PretrainModel",),
    "recipes": ("GROUPS", "MODEL_MODALITY", "OBJECTIVES", "RECIPES", "Recipe", "get_recipe", "group_batch_sizes",
                "group_of"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'tasks' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
