"""Built-in stage kinds; importing this package registers them (keep every import light)."""

from pipelines.stages import corpus, shards, text_tokenizer  # noqa: F401
