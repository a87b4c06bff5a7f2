"""omniway.tasks: what is learned and measured. Imports model, torch and numpy; the metrics also use
scikit-learn (linear_probe, zero_shot), jiwer and pycocoevalcap (text_metrics), each imported lazily inside
the function that needs it, so importing a module does not import them.

Public API::

    from tasks import PretrainModel, get_recipe, RECIPES, GROUPS, Collator, BatchSpec

    recipe = get_recipe("omni")                          # presets: beit3, one-peace, opt, omni
    model = PretrainModel(ModelConfig.from_size("debug"), recipe, mim_target="pixels")
    collator = Collator(BatchSpec(...), recipe)
    t = collator.add_masks("image_text", collator.collate("image_text", numpy_rows), generator)
    out = model({"image_text": t})                       # {"loss", "mlm", "mlm/image_text", ...}

Modules:
    masking     random_token_mask, block_mask (BEiT block-wise), span_mask (1-D audio blocks)
    augment     sample_seeds, augment_images (random resized crop, flip, colour jitter per sample seed)
    losses      gather_with_grad, contrastive_loss, token_infonce
    objectives  MaskedLanguageModeling, MaskedImageModeling, MaskedAudioModeling, CrossModalContrast,
                DenoisingContrast -- each an nn.Module owning its head, returning {"loss", parts}
    matching    MatchClassification (ITMHead), hard_negatives, draw_matching, TRIPLET_STATES (OPT's sample level)
    recipes     Recipe, ImageAugment, RECIPES, get_recipe, GROUPS, group_of, group_batch_sizes
    batching    BatchSpec, Collator (shard rows -> tensors, masks from an explicit generator)
    pretrain    PretrainModel (backbone + heads, routes each group to its objectives)
    metrics     recall_at_k, retrieval_metrics (pretraining validation, on tasks.retrieval's ranks)
    retrieval   retrieval_scores, best_positive_ranks (chunked exact ranks: R@k, mean / median rank, chance);
                pair_retrieval_scores (the same for positives given as index lists: tasks.retrieval only)
    zero_shot   build_zero_shot_classifier, zero_shot_logits, classification_metrics, mean_per_class_recall
    linear_probe  linear_probe (scikit-learn logistic regression on frozen features)
    text_metrics  captioning_scores, captioning_baseline, vqa_accuracy, most_frequent_answer, asr_scores,
                asr_baseline, vqa_scores (pycocoevalcap, jiwer)
    caption_tokenizer  ptb_tokenize (the COCO evaluation's Java PTB tokenization, in Python)
    vqa_answers  normalize_answer, vqa_soft_score (VQAv2 answer normalisation and leave-one-out accuracy)
    chat        ChatTemplate (conversations -> ids + loss mask in one pass), normalize_turns, ConversationError
"""

from model.lazy_exports import lazy_exports

# Names -> the submodule defining them, imported on first use (PEP 562): `tasks.recipes` needs only the
# standard library, so the pipeline planner checks recipe names and overrides without importing torch.
_EXPORTS = {
    "batching": ("BatchSpec", "Collator"),
    "linear_probe": ("linear_probe",),
    "metrics": ("recall_at_k", "retrieval_metrics"),
    "pretrain": ("PretrainModel",),
    "recipes": ("GROUPS", "MODEL_MODALITY", "OBJECTIVES", "RECIPES", "Recipe", "get_recipe", "group_batch_sizes",
                "group_of"),
    "retrieval": ("best_positive_ranks", "retrieval_scores"),
    "text_metrics": ("asr_baseline", "asr_scores", "captioning_baseline", "captioning_scores", "most_frequent_answer",
                     "most_frequent_caption", "vqa_accuracy", "vqa_scores"),
    "vqa_answers": ("normalize_answer", "vqa_soft_score"),
    "zero_shot": ("build_zero_shot_classifier", "classification_metrics", "mean_per_class_recall",
                  "zero_shot_logits"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), _EXPORTS)
