"""Stage kind `visual-tokenizer`: corpus images -> a trained VQ-KD visual tokenizer (BEiT v2 style).

Light module; the work is in `pipelines.visual_tokenizer.stage_impl`. Its manifest carries
`extra.encoder`, the contract the `shards` stage uses to compute `image_tokens`.
"""

from __future__ import annotations

from pipelines.registry import pipeline_check, stage_kind
from pipelines.visual_tokenizer.checks import check_pipeline
from pipelines.visual_tokenizer.config import VisualTokenizerConfig

# Tokenizer resolution / patch grid against the shards and model configs that use it.
pipeline_check(check_pipeline)


@stage_kind("visual-tokenizer", config=VisualTokenizerConfig, version="1", num_cpus=0,
            description="VQ-KD visual tokenizer trained on the corpus images (ids for shards)")
def visual_tokenizer(ctx) -> dict[str, float]:
    from pipelines.visual_tokenizer.stage_impl import run_visual_tokenizer

    return run_visual_tokenizer(ctx)
