"""Body of the `shards` kind: corpus samples -> model-ready Parquet shards per split.

Flow (Ray Data): the driver plans the output files from corpus Parquet metadata alone --
`<split>/part-NNNNN.parquet` holds rows [N * rows_per_file, (N + 1) * rows_per_file) of
the split, in corpus order -- and one Ray actor pool (tokenizers loaded once per actor)
builds each part file whole: it reads its row slices of the corpus, computes the model
columns (text ids, pixels, visual tokens, log-mel) and encodes the Parquet file. The
driver receives only the encoded file (already compressed) and a few counts, and writes
it under its planned name. Each file's bytes depend on its rows alone, so two runs give
byte-identical shards whatever the scheduling; the parts are handed out heaviest first,
one at a time per actor, so a part of photos and sounds does not wait behind text.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from typing import Iterator

from pipelines.data import schema
from pipelines.data.config import ShardsConfig


def plan_units(corpus, split: str) -> list[dict]:
    """(corpus file, row group) units of one split, in corpus order (also used by the
    visual tokenizer's image dataset)."""
    import pyarrow.parquet as pq

    units = []
    for path in corpus.paths(".parquet", prefix=f"{split}/"):
        with corpus.storage.open_input(path) as f:
            groups = pq.ParquetFile(f).metadata.num_row_groups
        units += [{"path": path, "row_group": g} for g in range(groups)]
    return units


# Relative CPU cost of a corpus byte by column, to hand out the heaviest parts first
# (decoding a compressed image or sound costs far more per byte than tokenizing text).
_COST_PER_BYTE = {"image": 8.0, "audio": 8.0, "text": 1.0}


def plan_parts(corpus, split: str, rows_per_file: int) -> list[dict]:
    """The part files of one split, from Parquet footers only (no row is read).

    Returns dicts {split, index, rows, cost, slices: [{path, row_group, start, stop}]}:
    part `index` holds split rows [index * rows_per_file, ...) in corpus order.
    `cost` is an estimate (compressed media bytes) used only to order the work.
    """
    import pyarrow.parquet as pq

    parts: list[dict] = []
    cur: dict | None = None
    for path in corpus.paths(".parquet", prefix=f"{split}/"):
        with corpus.storage.open_input(path) as f:
            meta = pq.ParquetFile(f).metadata
        names = [meta.schema.column(i).path.split(".")[0] for i in range(meta.num_columns)]
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            n = rg.num_rows
            weight = sum(_COST_PER_BYTE.get(name, 0.0) * rg.column(i).total_compressed_size
                         for i, name in enumerate(names)) / max(1, n)
            start = 0
            while start < n:
                if cur is None or cur["rows"] == rows_per_file:
                    cur = {"split": split, "index": len(parts), "rows": 0, "cost": 0.0,
                           "slices": []}
                    parts.append(cur)
                take = min(n - start, rows_per_file - cur["rows"])
                cur["slices"].append({"path": path, "row_group": g, "start": start,
                                      "stop": start + take})
                cur["rows"] += take
                cur["cost"] += weight * take + 1.0 * take
                start += take
    return parts


def featurize_table(featurizer, rows: list[dict], batch_size: int):
    """Corpus rows -> one shards table, `batch_size` rows per Featurizer.rows call."""
    import pyarrow as pa

    sch = schema.shards_schema()
    tables = [pa.Table.from_pylist(featurizer.rows(rows[i:i + batch_size]), schema=sch)
              for i in range(0, len(rows), batch_size)]
    return pa.concat_tables(tables) if tables else sch.empty_table()


def part_stats(table, plot_samples: int) -> dict:
    """Counts the manifest and metrics need, plus the first `plot_samples` log-mels."""
    import pyarrow.compute as pc

    mods = Counter(m for ms in table.column("modalities").to_pylist() for m in ms)
    tokens = pc.sum(pc.list_value_length(table.column("text_ids"))).as_py() or 0
    frames = pc.sum(table.column("fbank_frames")).as_py() or 0
    plots = []
    if plot_samples:
        audio = table.filter(pc.is_valid(table.column("fbank"))).slice(0, plot_samples)
        plots = [(r["fbank"], r["fbank_frames"], r["text_ids"] or [])
                 for r in audio.select(["fbank", "fbank_frames", "text_ids"]).to_pylist()]
    return {"modalities": dict(mods), "text_tokens": int(tokens), "fbank_frames": int(frames),
            "plots": plots}


class ShardWorker:
    """Ray Data callable class: a batch of part specs -> one result row per part file.

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

    def _read(self, slices: list[dict]) -> list[dict]:
        import pyarrow.parquet as pq

        rows: list[dict] = []
        cache: dict = {}
        for s in slices:
            key = (s["path"], s["row_group"])
            if key not in cache:
                f = self.storage.open_input(s["path"]) if self.storage else open(s["path"], "rb")
                with f:
                    cache[key] = pq.ParquetFile(f).read_row_group(s["row_group"])
            rows += cache[key].slice(s["start"], s["stop"] - s["start"]).to_pylist()
        return rows

    def __call__(self, batch) -> Iterator:
        import hashlib

        import pyarrow as pa

        from pipelines.data.writer import encode_parquet

        for spec_json in batch.column("spec").to_pylist():
            spec = json.loads(spec_json)
            table = featurize_table(self.featurizer, self._read(spec["slices"]),
                                    self.cfg.batch_size)
            data = encode_parquet(table)
            stats = part_stats(table, self.cfg.plot_samples)
            yield pa.table({
                "split": [spec["split"]], "index": [spec["index"]], "rows": [table.num_rows],
                "data": pa.array([data], pa.large_binary()),
                "sha256": [hashlib.sha256(data).hexdigest()],
                "stats": [json.dumps({k: v for k, v in stats.items() if k != "plots"})],
                "plot_fbank": pa.array([[p[0] for p in stats["plots"]]], pa.list_(pa.binary())),
                "plot_frames": pa.array([[p[1] for p in stats["plots"]]], pa.list_(pa.int32())),
                "plot_ids": pa.array([[p[2] for p in stats["plots"]]],
                                     pa.list_(pa.list_(pa.int32()))),
            })


def iter_parts(corpus, spm_model: bytes, cfg: ShardsConfig, splits=schema.SPLITS, visual=None):
    """Build every part file of the given splits on one Ray actor pool.

    Yields (spec, result row) per part as parts finish (any order); `result["data"]` is
    the encoded Parquet file. One dataset for all splits so the actors (and their
    tokenizers) start once; heaviest parts first, one part in flight per actor.
    """
    from pipelines.data.raycompat import ensure_ray, pool

    parts = [p for split in splits for p in plan_parts(corpus, split, cfg.rows_per_file)]
    if not parts:
        return
    specs = {(p["split"], p["index"]): p for p in parts}
    order = sorted(parts, key=lambda p: (-p["cost"], p["split"], p["index"]))
    ray = ensure_ray()
    ds = ray.data.from_items([{"spec": json.dumps(p)} for p in order],
                             override_num_blocks=len(order))
    ds = ds.map_batches(ShardWorker, batch_size=1, batch_format="pyarrow",
                        fn_constructor_args=(spm_model, cfg, corpus.storage_uri, visual),
                        compute=pool(ray, cfg.num_workers, len(order), in_flight=1))
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in batch.to_pylist():
            yield specs[(row["split"], row["index"])], row


def write_shards(corpus, spm_model: bytes, cfg: ShardsConfig, out_dir: str, set_rows=None,
                 splits=schema.SPLITS, visual=None) -> list[dict]:
    """Write `<split>/part-NNNNN.parquet` under out_dir; returns the results sorted by
    (split, index), each {split, index, path, rows, sha256, stats, plots} without the bytes."""
    from pipelines.data.writer import part_name

    done = []
    for spec, row in iter_parts(corpus, spm_model, cfg, splits, visual):
        if row["rows"] != spec["rows"]:
            raise RuntimeError(f"shards: part {spec['split']}/{spec['index']} has {row['rows']} "
                               f"rows, planned {spec['rows']}")
        rel = f"{spec['split']}/{part_name(spec['index'])}"
        os.makedirs(os.path.join(out_dir, spec["split"]), exist_ok=True)
        with open(os.path.join(out_dir, rel), "wb") as f:
            f.write(row["data"])
        if set_rows:
            set_rows(rel, row["rows"])
        done.append({"split": spec["split"], "index": spec["index"], "path": rel,
                     "rows": row["rows"], "sha256": row["sha256"],
                     "stats": json.loads(row["stats"]),
                     "plots": list(zip(row["plot_fbank"], row["plot_frames"], row["plot_ids"]))})
    done.sort(key=lambda r: (splits.index(r["split"]), r["index"]))
    return done


def read_bytes(manifest, rel: str) -> bytes:
    with manifest.open(rel) as f:
        return f.read()


def run_shards(ctx) -> dict[str, float]:
    import numpy as np

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
