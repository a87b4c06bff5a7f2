"""Stage kind `shards`: corpus + tokenizers -> model-ready Parquet shards (see data/schema.py).

Light module; the work is in `pipelines.data.shards_impl`.
"""

from __future__ import annotations

from pipelines.data.config import ShardsConfig
from pipelines.registry import stage_kind


@stage_kind("shards", config=ShardsConfig, version="1", num_cpus=0,
            description="text ids, pixels, visual tokens and log-mel features in fixed-size "
                        "Parquet shards")
def shards(ctx) -> dict[str, float]:
    from pipelines.data.shards_impl import run_shards

    return run_shards(ctx)
