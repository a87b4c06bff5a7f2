"""Stage kind `shards`: corpus + tokenizers -> model-ready Parquet shards (see `pipelines.data.schema`).

The work: `pipelines.data.shards_plan` (which rows make each part, how the work is handed out),
`pipelines.data.shards_task` (the Ray task: featurize, encode, write) and `pipelines.data.shards_build`
(the stage process's side). The image resolution is the visual tokenizer's when there is one (filled in
when the pipeline loads; a value that contradicts it is a load-time error).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Optional

from pipelines.registry import stage_kind
from pipelines.typed import ConfigError

DEFAULT_RESOLUTION = 224  # without a visual tokenizer (BEiT-3's pretraining resolution)


@dataclass
class ShardsConfig:
    """Config of the `shards` kind.

    Args:
        rows_per_file: rows per shard file (fixed; the last file of a split may be short).
        image_resolution: R of the C×R×R pixels (shorter side resized to R, centre crop); default: the
            visual tokenizer's resolution, else 224.
        max_text_tokens: token ids per sample at most, bos and eos included.
        num_workers: Ray tasks featurizing in parallel (1 CPU each; a worker process
            loads the tokenizers once and keeps them for its later tasks).
        batch_size: samples per Featurizer.rows call (and per visual tokenizer call).
        plot_samples: spectrograms in the log-mel artifact (0 = none).
    """

    rows_per_file: int = 1024
    image_resolution: Optional[int] = None
    max_text_tokens: int = 256
    num_workers: int = 2
    batch_size: int = 32
    plot_samples: int = 6


def resolve(cfg: ShardsConfig, inputs: dict, where: str) -> tuple[ShardsConfig, dict]:
    """The resolution from the visual tokenizer; facts: the resolution and the visual tokens' grid."""
    import dataclasses

    kinds = [s.uses for s in inputs.values()]
    for kind in ("corpus", "text-tokenizer"):
        if kinds.count(kind) != 1:
            raise ConfigError(f"{where}: needs: exactly one `{kind}` stage (got {kinds.count(kind)})")
    if kinds.count("visual-tokenizer") > 1:
        raise ConfigError(f"{where}: needs: at most one `visual-tokenizer` stage")
    visual = next((dict(s.facts["visual_tokens"], stage=name) for name, s in inputs.items()
                   if s.uses == "visual-tokenizer"), None)
    resolution = cfg.image_resolution
    if visual is not None:
        R, P = visual["image_resolution"], visual["patch_size"]
        if resolution is None:
            resolution = R
        elif resolution != R:
            raise ConfigError(
                f"{where}: with.image_resolution: {resolution} does not match visual tokenizer "
                f"{visual['stage']!r} (with.tokenizer.image_resolution {R}); its ids cover a {R // P}x{R // P} "
                f"grid of {R}px images. Leave it unset (it is taken from the tokenizer)")
    elif resolution is None:
        resolution = DEFAULT_RESOLUTION
    corpus = next(s.facts for s in inputs.values() if s.uses == "corpus")
    return (dataclasses.replace(cfg, image_resolution=resolution),
            {"image_resolution": resolution, "visual_tokens": visual, "label_names": corpus.get("label_names", {})})


@stage_kind("shards", config=ShardsConfig, version="1", num_cpus=0, resolve=resolve,
            description="text ids, pixels, visual tokens and log-mel features in fixed-size "
                        "Parquet shards")
def shards(ctx) -> dict[str, float]:
    import dataclasses
    import os

    import numpy as np

    from pipelines.data import schema
    from pipelines.data.shards_build import write_shards
    from pipelines.stages.visual_tokenizer import manifest_facts

    cfg: ShardsConfig = ctx.config
    corpus = ctx.input("corpus")
    schema.check_corpus(corpus, ctx.stage)
    tok = ctx.input("text-tokenizer")
    tok_info = tok.extra["tokenizer"]
    with tok.open(tok_info["model"]) as f:
        spm_model = f.read()
    visuals = ctx.inputs_of_kind("visual-tokenizer")
    visual = visuals[0] if visuals else None
    visual_facts = manifest_facts(visual) if visual else None
    # the resolution the visual tokenizer was trained at (filled in at load time; a stage run on its
    # own gets it from the tokenizer's manifest here)
    resolution = cfg.image_resolution or (visual_facts or {}).get("image_resolution") or DEFAULT_RESOLUTION
    if visual_facts and resolution != visual_facts["image_resolution"]:
        raise ValueError(f"shards: image_resolution {resolution} does not match visual tokenizer "
                         f"{visual.stage!r} ({visual_facts['image_resolution']} px); leave it unset")
    cfg = dataclasses.replace(cfg, image_resolution=resolution)
    started = time.time()
    count: Counter = Counter()
    per_modality: dict[str, Counter] = {s: Counter() for s in schema.SPLITS}
    plots: list[tuple] = []
    for part in write_shards(corpus, spm_model, cfg, ctx.output_dir, ctx.set_rows,
                             schema.SPLITS, visual):
        split, stats = part["split"], part["stats"]
        count[split] += part["rows"]
        per_modality[split].update(stats["modalities"])
        count["text_tokens"] += stats["text_tokens"]
        count["fbank_frames"] += stats["fbank_frames"]
        plots += part["plots"][:max(0, cfg.plot_samples - len(plots))]
    expected = corpus.extra.get("rows_per_split", {})
    if any(count[s] != expected.get(s) for s in schema.SPLITS):
        raise RuntimeError(f"shards wrote {dict((s, count[s]) for s in schema.SPLITS)} rows but "
                           f"the corpus has {expected}: rows were lost")
    seconds = time.time() - started
    n = count["train"] + count["val"]
    ctx.schema_version = schema.SHARDS_SCHEMA_VERSION
    ctx.extra.update({
        "rows_per_split": {s: count[s] for s in schema.SPLITS},
        "rows_per_modality": {s: {m: per_modality[s][m] for m in schema.MODALITIES}
                              for s in schema.SPLITS},
        "tokenizers": {"text": {"stage": tok.stage, "sha256": tok_info["sha256"],
                                "vocab_size": tok_info["vocab_size"], "ids": tok_info["ids"]},
                       "visual": ({**visual_facts, "fingerprint": visual.fingerprint}
                                  if visual else None)},
        "corpus_fingerprint": corpus.fingerprint,
        "label_names": corpus.extra.get("label_names", {}),  # source -> label names, as the corpus recorded
        "image_resolution": cfg.image_resolution,
        "max_text_tokens": cfg.max_text_tokens,
        "fbank": {"sample_rate": schema.FBANK_SAMPLE_RATE, "win": schema.FBANK_WIN,
                  "hop": schema.FBANK_HOP, "mels": schema.FBANK_MELS, "dtype": "float16",
                  "layout": "frames x mels", "log": "natural, floor 1e-10"},
    })
    metrics = {"rows": float(n), "train": float(count["train"]), "val": float(count["val"]),
               "text_tokens": float(count["text_tokens"]),
               "fbank_frames": float(count["fbank_frames"]), "seconds": round(seconds, 3),
               "samples_per_s": round(n / max(seconds, 1e-9), 2)}
    metrics.update({f"modality.{m}": float(sum(per_modality[s][m] for s in schema.SPLITS))
                    for m in schema.MODALITIES})
    print(f"[shards] {n} rows (train {count['train']}, val {count['val']}), "
          f"{metrics['samples_per_s']} samples/s", flush=True)
    if plots:
        import sentencepiece as spm

        from pipelines.data.fbank import decode_fbank
        from pipelines.data.plots import spectrogram_grid

        sp = spm.SentencePieceProcessor(model_proto=spm_model)
        path = os.path.join(ctx.scratch_dir(), "log_mel.png")
        spectrogram_grid([(decode_fbank(b, f).astype(np.float32), sp.decode(ids))
                          for b, f, ids in plots], path)
        ctx.log_artifact(path)
    return metrics
