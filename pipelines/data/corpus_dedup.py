"""Exact deduplication of the corpus stage without one process holding every content hash.

    staged train/val files, projected to (content_hash, sample_id, split, unit, idx)   read_parquet
      -> records past their source's limit dropped                                     map_batches
      -> hash-partitioned by content_hash (every copy of a content in one block)       repartition(keys)
      -> per block: sort by (content_hash, unit, idx); the first of each hash wins,
         the others become (sample_id, duplicate_of = the winner's sample_id)          map_batches
      -> hash-partitioned by unit; per unit, its losers written to
         staging duplicates/<unit>.parquet sorted by idx; a count per unit returned    repartition(keys)

(unit, idx) is the order of the one-process loop the stage used to run (units in plan order, records
in reader order), so the same copy wins. Only these small records move (no media); a block of the
shuffle holds 1 / partitions of them, and `partitions_for` keeps that bounded whatever the corpus size.
A corpus whose records fit one partition skips the shuffle: one Ray task reads them all and runs the
same two steps (a shuffle's fixed cost, seconds, is most of a small corpus' dedup time). The stage
process sees one count row per unit that has duplicates.
"""

from __future__ import annotations

from typing import Iterator

# Hash records per shuffle partition (~150 bytes each, so ~75 MB per block at most).
RECORDS_PER_PARTITION = 500_000
_COLUMNS = ["content_hash", "sample_id", "split", "unit", "idx"]


def partitions_for(records: int, workers: int) -> int:
    """Shuffle partitions: none above RECORDS_PER_PARTITION records; when more than one is needed,
    at least one per worker."""
    parts = max(1, -(-records // RECORDS_PER_PARTITION))
    return 1 if parts == 1 else max(parts, workers)


def _within_limit(batch, *, cutoffs: list[int]):
    """Keep the records a source's `limit` lets in: idx < cutoffs[unit]."""
    import numpy as np
    import pyarrow as pa

    unit = batch.column("unit").to_numpy()
    idx = batch.column("idx").to_numpy()
    return batch.filter(pa.array(idx < np.asarray(cutoffs, np.int64)[unit]))


def losers_schema():
    import pyarrow as pa

    return pa.schema([("unit", pa.int32()), ("idx", pa.int32()), ("split", pa.string()),
                      ("sample_id", pa.string()), ("duplicate_of", pa.string())])


def losers(block):
    """One shuffle partition's records -> the ones that are not the first copy of their content."""
    import numpy as np
    import pyarrow as pa

    if block.num_rows == 0:
        return losers_schema().empty_table()
    t = block.sort_by([("content_hash", "ascending"), ("unit", "ascending"), ("idx", "ascending")])
    h = t.column("content_hash").to_numpy(zero_copy_only=False)
    first = np.ones(len(h), bool)
    first[1:] = h[1:] != h[:-1]
    # index of the first row of each row's hash group: rows are sorted, so a running max of starts
    start = np.maximum.accumulate(np.where(first, np.arange(len(h)), 0))
    lose = np.flatnonzero(~first)
    out = t.take(pa.array(lose)).select(["unit", "idx", "split", "sample_id"])
    return out.append_column("duplicate_of", t.column("sample_id").take(pa.array(start[lose])))


def count_schema():
    import pyarrow as pa

    return pa.schema([("unit", pa.int32()), ("train", pa.int64()), ("val", pa.int64())])


def write_unit_losers(block, *, staging) -> Iterator:
    """One partition of losers (whole units) -> duplicates/<unit>.parquet each, sorted by idx; yields
    (unit, losers in train, losers in val) per unit."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipelines.data.corpus_staging import unit_file
    from pipelines.data.ingest import staged_schema

    if block.num_rows == 0:
        return
    t = block.sort_by([("unit", "ascending"), ("idx", "ascending")])
    units = t.column("unit").to_numpy()
    bounds = np.flatnonzero(np.diff(units)) + 1
    sch = staged_schema("duplicates")
    rows = []
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(units)]):
        part = t.slice(lo, hi - lo)
        staging.write_table(unit_file("duplicates", int(units[lo])), part.select(sch.names).cast(sch))
        val = pc.sum(pc.equal(part.column("split"), "val")).as_py() or 0
        rows.append({"unit": int(units[lo]), "train": part.num_rows - val, "val": val})
    yield pa.Table.from_pylist(rows, schema=count_schema())


def find_duplicates(staging, summaries: dict[int, dict], cutoffs: list[int], workers: int) -> dict[int, dict]:
    """Write every unit's duplicates file; returns unit -> {"train": n, "val": n} losers, for units
    that have any.

    Args:
        staging: the stage's `corpus_staging.Staging`, holding the ingest pass's files.
        summaries: unit -> its ingest summary (rows per table).
        cutoffs: per unit (by plan order), how many of its records are within the source's limit.
        workers: the stage's `num_workers`.
    """
    from pipelines.data import schema
    from pipelines.data.corpus_staging import unit_file
    from pipelines.data.raycompat import ensure_ray, ensure_ray_core, pool_task

    paths = [staging.full(unit_file(split, u)) for u in sorted(summaries) for split in schema.SPLITS
             if summaries[u][split] and cutoffs[u] > 0]
    if not paths:
        return {}
    ray = ensure_ray_core()
    records = sum(summaries[u]["train"] + summaries[u]["val"] for u in summaries)
    parts = partitions_for(records, workers)
    out: dict[int, dict] = {}
    if parts == 1:
        blocks = [ray.get(pool_task(ray, _one_partition).remote(staging, paths, cutoffs))]
    else:
        blocks = _shuffled(ensure_ray(), staging, paths, cutoffs, parts, workers,
                           any(cutoffs[u] < summaries[u]["records"] for u in summaries))
    for block in blocks:
        for row in block.to_pylist():
            out[row["unit"]] = {"train": row["train"], "val": row["val"]}
    return out


def _one_partition(staging, paths: list[str], cutoffs: list[int]):
    """The whole dedup in one task, for records that fit one partition: the shuffle's two steps on
    one block. Returns the per-unit count table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for path in paths:
        with staging.storage.open_input(path) as f:
            tables.append(_within_limit(pq.read_table(f, columns=_COLUMNS), cutoffs=cutoffs))
    counts = list(write_unit_losers(losers(pa.concat_tables(tables)), staging=staging))
    return pa.concat_tables(counts) if counts else count_schema().empty_table()


def _shuffled(ray, staging, paths: list[str], cutoffs: list[int], parts: int, workers: int,
              limited: bool):
    """The dedup as two hash-partitioned Ray Data passes; yields the per-unit count blocks.

    Ray Data here, where the other passes are plain tasks: an all-to-all exchange (every copy of a
    content into one block, from any input file) is what its keyed `repartition` does, with blocks of
    bounded size that spill to disk. Its executor's scheduling loop in this process is the price,
    paid only by corpora whose records need more than one partition."""
    ds = ray.data.read_parquet(paths, filesystem=staging.filesystem(),
                               override_num_blocks=min(len(paths), max(workers, parts) * 4))
    ds = ds.select_columns(_COLUMNS)  # pushed into the read: the media columns are never read
    if limited:
        ds = ds.map_batches(_within_limit, fn_kwargs={"cutoffs": cutoffs}, batch_format="pyarrow",
                            batch_size=None)
    # keyed repartition keeps every row of a key in one block (what groupby relies on): whole
    # hash groups, then whole units, reach one map call each
    ds = ds.repartition(parts, keys=["content_hash"]).map_batches(
        losers, batch_format="pyarrow", batch_size=None)
    ds = ds.repartition(parts, keys=["unit"]).map_batches(
        write_unit_losers, fn_kwargs={"staging": staging}, batch_format="pyarrow", batch_size=None)
    ds.context.execution_options.preserve_order = False
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")
