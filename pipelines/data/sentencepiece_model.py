"""Sentencepiece models for the `text-tokenizer` stage: its training text, training, and the checks.

Training is deterministic for a seed: input order is fixed, shuffling is off and sentencepiece's
generator is seeded; no file path ends up inside the model proto.
"""

from __future__ import annotations

MODEL_NAME = "text.model"


def write_training_text(corpus_manifest, cfg, path: str) -> int:
    """Corpus train-split text -> one sentence per line at `path`; returns lines written."""
    import pyarrow.parquet as pq

    n = 0
    with open(path, "w", encoding="utf-8") as out:
        for file in corpus_manifest.paths(".parquet", prefix="train/"):
            with corpus_manifest.storage.open_input(file) as f:
                column = pq.read_table(f, columns=["text"]).column("text")
            for text in column.to_pylist():
                if text is None:
                    continue
                for line in text.splitlines():
                    line = line.strip()[: cfg.max_sentence_chars]
                    if not line:
                        continue
                    out.write(line + "\n")
                    n += 1
                    if cfg.max_sentences and n >= cfg.max_sentences:
                        return n
    return n


def train(cfg, text_path: str, model_path: str) -> None:
    """Train from `text_path` and write the model to `model_path`.

    Lines are fed through an iterator and the model comes back through a writer, so no
    file path ends up inside the model proto's trainer spec (paths differ between runs;
    the bytes must not).
    """
    import io

    import sentencepiece as spm

    spm.set_random_generator_seed(cfg.seed)
    writer = io.BytesIO()
    with open(text_path, encoding="utf-8") as lines:
        _train(spm, cfg, (line.rstrip("\n") for line in lines), writer)
    with open(model_path, "wb") as f:
        f.write(writer.getvalue())


def _train(spm, cfg, sentences, writer) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences, model_writer=writer, vocab_size=cfg.vocab_size,
        model_type=cfg.model_type, character_coverage=cfg.character_coverage,
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece=cfg.pad_piece,
        unk_piece=cfg.unk_piece, bos_piece=cfg.bos_piece, eos_piece=cfg.eos_piece,
        user_defined_symbols=list(cfg.special_tokens),
        # A small corpus may not support vocab_size pieces: take what it supports.
        hard_vocab_limit=False, shuffle_input_sentence=False, input_sentence_size=0,
        num_threads=cfg.num_threads, minloglevel=2)


def describe(model_path: str, cfg) -> dict:
    """Validate a model has what the multiway model needs; return ids and fingerprint."""
    import sentencepiece as spm

    from pipelines.manifest import sha256_file

    sp = spm.SentencePieceProcessor(model_file=model_path)
    ids, missing = {}, []
    for name, piece in (("pad", cfg.pad_piece), ("unk", cfg.unk_piece), ("bos", cfg.bos_piece),
                        ("eos", cfg.eos_piece), *((t, t) for t in cfg.special_tokens)):
        pid = sp.piece_to_id(piece)
        # piece_to_id answers unk's id for an unknown piece
        if pid == sp.unk_id() and piece != cfg.unk_piece or pid < 0:
            missing.append(piece)
        ids[name] = pid
    if missing:
        raise ValueError(f"text tokenizer {model_path}: the model lacks {missing}; the multiway "
                         "model needs pad/unk/bos/eos and every `special_tokens` entry. Set "
                         "pad_piece/bos_piece/... to the model's own pieces, or drop the "
                         "missing special tokens from `special_tokens`.")
    return {"model": MODEL_NAME, "vocab_size": sp.get_piece_size(), "ids": ids,
            "sha256": sha256_file(model_path), "model_type": cfg.model_type}
