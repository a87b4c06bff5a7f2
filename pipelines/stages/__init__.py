"""Built-in stage kinds, one module each (config, registration, body); importing this package registers
them. Keep every module light at import: the planner imports them all on every run."""

from pipelines.stages import corpus, evaluate, instruct, instructions, pretrain, shards, text_tokenizer  # noqa: F401
from pipelines.stages import visual_tokenizer  # noqa: F401
