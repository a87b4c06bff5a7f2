"""Stage kind `text-tokenizer`: sentencepiece BPE trained on the corpus text, or an adopted model.

Light module; the work is in `pipelines.data.tokenizer_impl`.
"""

from __future__ import annotations

from pipelines.data.config import TextTokenizerConfig
from pipelines.registry import stage_kind


@stage_kind("text-tokenizer", config=TextTokenizerConfig, version="1", num_cpus=1,
            description="train a sentencepiece BPE model on corpus text (or adopt a .model)")
def text_tokenizer(ctx) -> dict[str, float]:
    from pipelines.data.tokenizer_impl import run_text_tokenizer

    return run_text_tokenizer(ctx)
