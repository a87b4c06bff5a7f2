"""Body of the `shards` kind: corpus samples -> model-ready Parquet shards per split.

Flow (Ray Data, ordered): work units = (corpus file, row group) -> ShardWorker actors
(tokenizers loaded once per actor; text ids, pixels, visual tokens, log-mel) -> driver
cuts the ordered rows into `<split>/part-NNNNN.parquet` of exactly rows_per_file rows.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Iterator

from pipelines.data import schema
from pipelines.data.config import ShardsConfig


class ShardWorker:
    """Ray Data callable class: a batch of units (file, row group) -> shards row tables.

    Args:
        spm_model: sentencepiece model bytes.
        cfg: the shards config.
        storage_uri: storage root the corpus files live in.
        visual_manifest: the visual tokenizer's manifest, or None.
    """

    def __init__(self, spm_model: bytes, cfg: ShardsConfig, storage_uri: str, visual_manifest=None):
        from pipelines.data.featurize import Featurizer, load_visual_encoder
        from pipelines.storage import Storage

        visual = load_visual_encoder(visual_manifest) if visual_manifest is not None else None
        self.featurizer = Featurizer(spm_model, cfg, visual)
        self.storage = Storage(storage_uri) if storage_uri else None
        self.cfg = cfg

    def __call__(self, batch) -> Iterator:
        import pyarrow as pa
        import pyarrow.parquet as pq

        for unit in batch.to_pylist():
            f = self.storage.open_input(unit["path"]) if self.storage else open(unit["path"], "rb")
            with f:
                table = pq.ParquetFile(f).read_row_group(unit["row_group"])
            rows = table.to_pylist()
            for i in range(0, len(rows), self.cfg.batch_size):
                out = self.featurizer.rows(rows[i:i + self.cfg.batch_size])
                yield pa.Table.from_pylist(out, schema=schema.shards_schema())


def read_bytes(manifest, rel: str) -> bytes:
    with manifest.open(rel) as f:
        return f.read()


def plan_units(corpus, split: str) -> list[dict]:
    import pyarrow.parquet as pq

    units = []
    for path in corpus.paths(".parquet", prefix=f"{split}/"):
        with corpus.storage.open_input(path) as f:
            groups = pq.ParquetFile(f).metadata.num_row_groups
        units += [{"path": path, "row_group": g} for g in range(groups)]
    return units


def iter_shards(corpus, spm_model: bytes, cfg: ShardsConfig, splits=schema.SPLITS, visual=None):
    """Ordered shards rows (pyarrow tables) of the given splits, from one Ray actor pool.

    One dataset for all splits so the actors (and their tokenizers) start once; units
    are ordered split by split, so every yielded table holds one split.
    """
    from pipelines.data.raycompat import ensure_ray, pool

    units = [u for split in splits for u in plan_units(corpus, split)]
    if not units:
        return
    ray = ensure_ray()
    ds = ray.data.from_items(units, override_num_blocks=len(units))
    ds = ds.map_batches(ShardWorker, batch_size=1, batch_format="pyarrow",
                        fn_constructor_args=(spm_model, cfg, corpus.storage_uri, visual),
                        compute=pool(ray, cfg.num_workers, len(units)))
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")


def run_shards(ctx) -> dict[str, float]:
    import numpy as np
    import pyarrow.compute as pc

    from pipelines.data.writer import PartWriter

    cfg: ShardsConfig = ctx.config
    corpus = ctx.input("corpus")
    if corpus.schema_version != schema.CORPUS_SCHEMA_VERSION:
        raise ValueError(f"shards: corpus {corpus.stage!r} has schema {corpus.schema_version!r}; "
                         f"this code reads {schema.CORPUS_SCHEMA_VERSION!r}. Rerun the corpus stage.")
    tok = ctx.input("text-tokenizer")
    tok_info = tok.extra["tokenizer"]
    spm_model = read_bytes(tok, tok_info["model"])
    visuals = ctx.inputs_of_kind("visual-tokenizer")
    visual = visuals[0] if visuals else None
    started = time.time()
    count: Counter = Counter()
    per_modality: dict[str, Counter] = {s: Counter() for s in schema.SPLITS}
    plots: list[tuple] = []
    writers = {split: PartWriter(ctx.output_dir, split, schema.shards_schema(),
                                 cfg.rows_per_file, ctx.set_rows) for split in schema.SPLITS}
    for table in iter_shards(corpus, spm_model, cfg, schema.SPLITS, visual):
        for split in schema.SPLITS:
            part = table.filter(pc.equal(table.column("split"), split))
            writers[split].add(part)
            count[split] += part.num_rows
        for split, mods in zip(table.column("split").to_pylist(),
                               table.column("modalities").to_pylist()):
            per_modality[split].update(mods)
        ids = table.column("text_ids")
        count["text_tokens"] += int(pc.sum(pc.list_value_length(ids)).as_py() or 0)
        count["fbank_frames"] += int(pc.sum(table.column("fbank_frames")).as_py() or 0)
        if len(plots) < cfg.plot_samples:
            for row in table.filter(pc.is_valid(table.column("fbank"))).slice(
                    0, cfg.plot_samples - len(plots)).to_pylist():
                plots.append((row["fbank"], row["fbank_frames"], row["text_ids"] or []))
    for writer in writers.values():
        writer.close()
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
                       "visual": ({"stage": visual.stage, "fingerprint": visual.fingerprint}
                                  if visual else None)},
        "corpus_fingerprint": corpus.fingerprint,
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
    ctx.log_metrics(metrics)
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
