"""Built-in stage kinds; importing this package registers them (keep every import light)."""

from pipelines.stages import corpus, pretrain, shards, text_tokenizer  # noqa: F401
from pipelines.stages import visual_tokenizer  # noqa: F401
