"""Stage kind `corpus`: named sources -> validated samples + rejects, split into train / val.

Light on purpose (the planner imports it every run); the work is in
`pipelines.data.corpus_impl`, imported when the stage runs.
"""

from __future__ import annotations

from pipelines.data.config import CorpusConfig
from pipelines.registry import stage_kind


@stage_kind("corpus", config=CorpusConfig, version="1", num_cpus=0,
            description="read sources (webdataset, jsonl/csv, parquet, text, demo corpora), "
                        "validate, dedup, quarantine, split")
def corpus(ctx) -> dict[str, float]:
    from pipelines.data.corpus_impl import run_corpus

    return run_corpus(ctx)
