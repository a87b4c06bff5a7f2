"""The corpus stage process's side: plan the units, run the three passes of Ray tasks, keep per-unit counts.

    sources.plan -> units (plan order)
      -> ingest pass (`ingest`): tasks decode, validate, hash; rows into staging files   -> a summary per unit
      -> source limits: how many of each unit's records count (`cutoffs`), from the summaries alone
      -> dedup pass (`corpus_dedup`): hash-partitioned, writes each unit's losers            -> a count per unit
      -> part pass (`corpus_parts`): fixed-rows parts of train / val / rejects / duplicates -> a summary per part

The stage process never holds a sample: its memory and work grow with units and parts. Reading one
boundary unit's `idx` columns (where a `limit` falls inside a unit) is the only staged data it reads.
"""

from __future__ import annotations

from pipelines.data import schema
from pipelines.data.corpus_staging import unit_file


def cutoffs_of(cfg, units: list[dict], summaries: dict[int, dict]) -> list[int]:
    """Per unit, how many of its first records are read: all, unless its source's `limit` runs out
    (records counted in plan order, rejects included, as the one-process loop counted them)."""
    left = {s.name: s.limit or None for s in cfg.sources}
    cutoffs = []
    for u in units:
        n = summaries[u["order"]]["records"]
        room = left[u["source"]]
        take = n if room is None else min(n, room)
        if room is not None:
            left[u["source"]] = room - take
        cutoffs.append(take)
    return cutoffs


def within_limit(staging, summary: dict, cutoff: int) -> dict[str, int]:
    """Rows of each staged table of one unit among its first `cutoff` records."""
    import pyarrow.parquet as pq

    tables = ("train", "val", "rejects")
    if cutoff >= summary["records"]:
        return {t: summary[t] for t in tables}
    out = {t: 0 for t in tables}
    for t in tables:
        if cutoff and summary[t]:
            with staging.open_input(unit_file(t, summary["unit"])) as f:
                idx = pq.ParquetFile(f).read(columns=["idx"]).column("idx").to_numpy()
            out[t] = int((idx < cutoff).sum())
    return out


def build(cfg, out_dir: str, staging, set_rows=None, local_writes: bool = True) -> dict:
    """Run the passes; the parts land under out_dir. Returns {units, summaries, cutoffs, parts}:
    `parts` are `corpus_parts.run_parts`' summaries."""
    from pipelines.data import sources
    from pipelines.data.corpus_dedup import find_duplicates
    from pipelines.data.corpus_parts import plan_parts, run_parts
    from pipelines.data.ingest import run_ingest

    units = [u for s in cfg.sources for u in sources.plan(s)]
    for i, u in enumerate(units):
        u["order"] = i
    summaries = run_ingest(cfg, units, staging)
    cutoffs = cutoffs_of(cfg, units, summaries)
    within = {u["order"]: within_limit(staging, summaries[u["order"]], cutoffs[u["order"]]) for u in units}
    losers = {}
    if cfg.dedup:
        staged = {o: {**summaries[o], **within[o]} for o in within}
        losers = find_duplicates(staging, staged, cutoffs, cfg.num_workers)
    order = [u["order"] for u in units]
    kept = {split: [(o, within[o][split] - losers.get(o, {}).get(split, 0)) for o in order]
            for split in schema.SPLITS}
    kept["rejects"] = [(o, within[o]["rejects"]) for o in order]
    kept["duplicates"] = [(o, losers[o]["train"] + losers[o]["val"]) for o in order if o in losers]
    parts = plan_parts(kept, cfg.rows_per_file)
    done = run_parts(parts, staging, cutoffs, cfg, out_dir, set_rows, local_writes)
    return {"units": units, "summaries": summaries, "cutoffs": cutoffs, "parts": done}


def grid_samples(parts: list[dict], out_dir: str, n: int) -> list[dict]:
    """The first `n` accepted samples with an image in the stage's order (as the one-process loop
    picked them for the sample grid): {image, text, sample_id}, read back from the written parts."""
    import os

    import pyarrow.parquet as pq

    cands = sorted((u, idx, p["path"], row) for p in parts if p["table"] in schema.SPLITS
                   for u, idx, row in p["stats"]["images"])[:n]
    by_path: dict[str, list[int]] = {}
    for _, _, path, row in cands:
        by_path.setdefault(path, []).append(row)
    rows = {}
    for path, wanted in by_path.items():
        # ParquetFile, not read_table: one known file needs no dataset layer (whose first import, pandas
        # included, costs the stage process more than the read)
        table = pq.ParquetFile(os.path.join(out_dir, path)).read(columns=["sample_id", "text", "image"])
        for r in wanted:
            rows[(path, r)] = table.slice(r, 1).to_pylist()[0]
    return [rows[(path, r)] for _, _, path, r in cands]
