"""Body of the `corpus` stage kind: sources -> validated samples, rejects, train/val split.

Flow (Ray Data, ordered):
    work units (driver: list files / tars)            from_items, one unit per block
      -> read_and_normalize tasks (read bytes, decode, validate, hash)  map_batches
      -> driver: source limits, dedup by content hash, split by sample_id hash,
         fixed-rows Parquet files: train/, val/, rejects/, duplicates/
Accounting: read = accepted + rejected + duplicates, checked before anything commits.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from typing import Iterator

from pipelines.data import schema
from pipelines.data.config import CorpusConfig


def split_of(sample_id: str, val_fraction: float) -> str:
    """Deterministic split: the first 8 bytes of sha256(sample_id) as a fraction in [0, 1)."""
    x = int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "big") / 2.0 ** 64
    return "val" if x < val_fraction else "train"


def read_and_normalize(batch, *, cfg: CorpusConfig) -> Iterator:
    """Ray Data task: work units in, result tables (schema RESULT_SCHEMA) out.

    Reading and normalising share a task so no separate read task competes for CPUs; a
    unit's records are emitted in chunks of `batch_size`. A task, not an actor: Ray keeps
    task worker processes between datasets, so the next Ray Data stage (shards, the visual
    tokenizer's image decoding) finds workers that have already imported Ray Data and the
    decoders instead of starting actors from scratch.

    Args:
        batch: pyarrow table of work units (see `sources.plan`).
        cfg: the corpus config.
    """
    from pipelines.data import sources
    from pipelines.data.normalize import normalize_record
    from pipelines.data.tables import results_table

    by_name = {s.name: s for s in cfg.sources}
    for unit in batch.to_pylist():
        src = by_name[unit["source"]]
        require = tuple(src.require)
        rows = []
        for rec in sources.read(src, unit):
            rows.append(normalize_record(rec, cfg, require))
            if len(rows) >= cfg.batch_size:
                yield results_table(rows)
                rows = []
        if rows:
            yield results_table(rows)


def validate_config(cfg: CorpusConfig) -> None:
    if not cfg.sources:
        raise ValueError("corpus: `sources` is empty; name at least one source")
    names = [s.name for s in cfg.sources]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"corpus: every source needs a unique non-empty `name`, got {names}")
    for s in cfg.sources:
        bad = set(s.require) - set(schema.MODALITIES)
        if bad:
            raise ValueError(f"corpus source {s.name!r}: require has unknown modalities {bad}")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ValueError(f"corpus: val_fraction must be in [0, 1), got {cfg.val_fraction}")


def iter_results(cfg: CorpusConfig) -> Iterator[dict]:
    """All result rows of all sources, in a deterministic order (Ray tasks do the work)."""
    from pipelines.data import sources
    from pipelines.data.raycompat import ensure_ray, no_ramp_up, task_pool

    units = [u for s in cfg.sources for u in sources.plan(s)]
    ray = ensure_ray()
    # One unit per block, so the tasks share the units out one at a time.
    ds = ray.data.from_items(units, override_num_blocks=len(units))
    ds = ds.map_batches(read_and_normalize, fn_kwargs={"cfg": cfg}, batch_size=1,
                        batch_format="pyarrow", num_cpus=1,
                        compute=task_pool(ray, cfg.num_workers, len(units)))
    ds = no_ramp_up(ds)
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield from batch.to_pylist()


def run_corpus(ctx) -> dict[str, float]:
    from pipelines.data.writer import PartWriter

    cfg: CorpusConfig = ctx.config
    validate_config(cfg)
    started = time.time()
    out = ctx.output_dir
    writers = {split: PartWriter(out, split, schema.corpus_schema(), cfg.rows_per_file,
                                 ctx.set_rows) for split in schema.SPLITS}
    rejects = PartWriter(out, "rejects", schema.rejects_schema(), cfg.rows_per_file, ctx.set_rows)
    import pyarrow as pa

    dups = PartWriter(out, "duplicates", pa.schema([("sample_id", pa.string()),
                                                    ("duplicate_of", pa.string())]),
                      cfg.rows_per_file, ctx.set_rows)
    limits = {s.name: s.limit for s in cfg.sources}
    per_source: Counter = Counter()
    count = Counter()
    reasons: Counter = Counter()
    modalities: Counter = Counter()
    seen: dict[str, str] = {}
    samples: list[dict] = []  # for the image grid artifact
    for row in iter_results(cfg):
        src = row["source"]
        if limits[src] and per_source[src] >= limits[src]:
            continue  # past the source's limit: not read (documented in SourceConfig.limit)
        per_source[src] += 1
        count["read"] += 1
        if row["reason"]:
            count["rejected"] += 1
            reasons[row["reason"]] += 1
            rejects.add_rows([{"source": src, "key": row["key"], "reason": row["reason"],
                               "detail": row["detail"]}])
            continue
        first = seen.get(row["content_hash"]) if cfg.dedup else None
        if first is not None:
            count["duplicates"] += 1
            dups.add_rows([{"sample_id": row["sample_id"], "duplicate_of": first}])
            continue
        seen[row["content_hash"]] = row["sample_id"]
        count["accepted"] += 1
        row["split"] = split_of(row["sample_id"], cfg.val_fraction)
        count[row["split"]] += 1
        modalities.update(row["modalities"])
        count["combo:" + "+".join(row["modalities"])] += 1
        writers[row["split"]].add_rows([row])
        if row["image"] is not None and len(samples) < cfg.plot_samples:
            samples.append(row)
    for w in (*writers.values(), rejects, dups):
        w.close()
    if count["read"] != count["accepted"] + count["rejected"] + count["duplicates"]:
        raise RuntimeError(f"corpus accounting broken: {dict(count)}")
    seconds = time.time() - started
    print(f"[corpus] read {count['read']} = accepted {count['accepted']} + rejected "
          f"{count['rejected']} + duplicates {count['duplicates']}; rejected by reason "
          f"{dict(sorted(reasons.items()))}; {count['read'] / max(seconds, 1e-9):.1f} samples/s",
          flush=True)

    ctx.schema_version = schema.CORPUS_SCHEMA_VERSION
    ctx.extra.update({
        "counts": {k: count[k] for k in ("read", "accepted", "rejected", "duplicates")},
        "rows_per_split": {s: count[s] for s in schema.SPLITS},
        "rows_per_modality": {m: modalities[m] for m in schema.MODALITIES},
        "rows_per_combination": {k[6:]: v for k, v in sorted(count.items())
                                 if k.startswith("combo:")},
        "rejected_by_reason": dict(sorted(reasons.items())),
        "read_by_source": dict(sorted(per_source.items())),
    })
    metrics = {k: float(count[k]) for k in ("read", "accepted", "rejected", "duplicates",
                                            "train", "val")}
    metrics.update({f"rejected.{r}": float(reasons[r]) for r in schema.REJECT_REASONS})
    metrics.update({f"modality.{m}": float(modalities[m]) for m in schema.MODALITIES})
    metrics["seconds"] = round(seconds, 3)
    metrics["samples_per_s"] = round(count["read"] / max(seconds, 1e-9), 2)
    ctx.log_metrics(metrics)
    _artifacts(ctx, samples, rejects.files)
    return metrics


def _artifacts(ctx, samples: list[dict], reject_files: list[str]) -> None:
    """Sample image grid and the rejects table, attached to the stage's MLflow run."""
    scratch = ctx.scratch_dir()
    if samples:
        from pipelines.data.plots import image_grid

        path = os.path.join(scratch, "corpus_samples.png")
        image_grid([(s["image"], s["text"] or s["sample_id"]) for s in samples], path)
        ctx.log_artifact(path)
    for rel in reject_files:
        ctx.log_artifact(os.path.join(ctx.output_dir, rel), "rejects")
