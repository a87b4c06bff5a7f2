"""Stage kind `text-tokenizer`: sentencepiece BPE trained on the corpus text, or an adopted model.

Trained: BPE (by default) on the train split's text, one line per sentence in corpus order, ids fixed as
pad=0, unk=1, bos=2, eos=3, then `special_tokens` (mask, modality placeholders) as user-defined pieces
4, 5, ... Deterministic for a seed. Adopted (`model_path`): the file is copied and must define
pad/unk/bos/eos and every special token. Output: `text.model`; manifest extra `tokenizer` with ids,
vocab size and sha256 (the fingerprint shards record). The work is `pipelines.data.sentencepiece_model`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, Optional

from pipelines.registry import stage_kind


@dataclass
class TextTokenizerConfig:
    """Config of the `text-tokenizer` kind.

    Args:
        vocab_size: sentencepiece vocabulary size (including special tokens).
        model_type: sentencepiece model type; BPE by default.
        character_coverage: share of characters the vocabulary must cover.
        seed: sentencepiece's random generator seed (training is deterministic for a seed).
        max_sentences: at most this many training lines (0 = all), taken in corpus order.
        max_sentence_chars: longer lines are cut before training.
        special_tokens: user-defined pieces with fixed ids right after pad/unk/bos/eos
            (mask token, modality placeholders).
        model_path: adopt this existing `.model` instead of training (validated).
        pad_piece / bos_piece / eos_piece / unk_piece: the control pieces; an adopted
            model must define them.
        num_threads: sentencepiece trainer threads.
    """

    vocab_size: int = 8000
    model_type: Literal["bpe", "unigram"] = "bpe"
    character_coverage: float = 0.9995
    seed: int = 0
    max_sentences: int = 2_000_000
    max_sentence_chars: int = 4192
    special_tokens: list[str] = field(default_factory=lambda: ["<mask>", "<image>", "<audio>",
                                                                 "<text>"])
    model_path: Optional[str] = None
    pad_piece: str = "<pad>"
    unk_piece: str = "<unk>"
    bos_piece: str = "<s>"
    eos_piece: str = "</s>"
    num_threads: int = 2


@stage_kind("text-tokenizer", config=TextTokenizerConfig, version="1", num_cpus=1,
            description="train a sentencepiece BPE model on corpus text (or adopt a .model)")
def text_tokenizer(ctx) -> dict[str, float]:
    import os
    import shutil

    from pipelines.data.sentencepiece_model import MODEL_NAME, describe, train, write_training_text

    cfg: TextTokenizerConfig = ctx.config
    started = time.time()
    model = os.path.join(ctx.output_dir, MODEL_NAME)
    lines = 0
    if cfg.model_path:
        if not os.path.isfile(cfg.model_path):
            raise FileNotFoundError(f"text-tokenizer: model_path {cfg.model_path!r} does not exist")
        shutil.copyfile(cfg.model_path, model)
    else:
        text_path = os.path.join(ctx.scratch_dir(), "train.txt")
        lines = write_training_text(ctx.input("corpus"), cfg, text_path)
        if lines == 0:
            raise ValueError("text-tokenizer: the corpus train split has no text to train on")
        train(cfg, text_path, model)
        shutil.rmtree(os.path.dirname(text_path), ignore_errors=True)
    info = describe(model, cfg)
    info["trained"] = not cfg.model_path
    ctx.extra["tokenizer"] = info
    seconds = time.time() - started
    metrics = {"vocab_size": float(info["vocab_size"]), "train_lines": float(lines),
               "seconds": round(seconds, 3),
               "lines_per_s": round(lines / max(seconds, 1e-9), 1)}
    print(f"[text-tokenizer] {'trained on ' + str(lines) + ' lines' if lines else 'adopted'}: "
          f"vocab {info['vocab_size']}, sha256 {info['sha256'][:12]}", flush=True)
    return metrics
