"""The corpus stage's first pass: work units -> decoded, validated rows in staging files, and a summary.

One `ingest_unit` Ray task per work unit (a file or a group of files, see `sources.plan`) reads and
normalises its records and writes them, as they come, into the unit's staging files (see
`corpus_staging`): accepted rows by split, rejects apart, each with `idx`, the record's position in
the unit. What it returns is one summary per unit (how many records, rows per table, the node):
no sample crosses to the stage process. `split_of` is the deterministic train / val split.
"""

from __future__ import annotations

import hashlib
from typing import Iterator


def split_of(sample_id: str, val_fraction: float) -> str:
    """Deterministic split: the first 8 bytes of sha256(sample_id) as a fraction in [0, 1)."""
    x = int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "big") / 2.0 ** 64
    return "val" if x < val_fraction else "train"


def unit_results(src, unit: dict, cfg) -> Iterator:
    """Result tables (`tables.RESULT_SCHEMA`) of one unit's records, `cfg.batch_size` rows each, in order."""
    from pipelines.data import sources
    from pipelines.data.normalize import normalize_record
    from pipelines.data.tables import results_table

    require = tuple(src.require)
    rows = []
    for rec in sources.read(src, unit):
        rows.append(normalize_record(rec, cfg, require))
        if len(rows) >= cfg.batch_size:
            yield results_table(rows)
            rows = []
    if rows:
        yield results_table(rows)


def staged_schema(table: str):
    """The schema of a staging file: the output table's columns, plus `unit` and `idx` (rows)."""
    import pyarrow as pa

    from pipelines.data import schema

    if table == "rejects":
        base = schema.rejects_schema()
    elif table == "duplicates":
        return pa.schema([("sample_id", pa.string()), ("duplicate_of", pa.string()),
                          ("split", pa.string()), ("idx", pa.int32())])
    else:
        base = schema.corpus_schema()
    return pa.schema(list(base) + [pa.field("unit", pa.int32()), pa.field("idx", pa.int32())])


class _UnitFiles:
    """The staging files of one unit, each opened on its first row and filled in row groups."""

    def __init__(self, staging, unit: int):
        from pipelines.data.corpus_staging import STAGING_ROW_GROUP

        self.staging, self.unit, self.group = staging, unit, STAGING_ROW_GROUP
        self.open: dict[str, tuple] = {}
        self.pending: dict[str, list] = {}
        self.rows = {"train": 0, "val": 0, "rejects": 0}

    def add(self, name: str, table) -> None:
        if table.num_rows == 0:
            return
        self.rows[name] += table.num_rows
        self.pending.setdefault(name, []).append(table)
        if sum(t.num_rows for t in self.pending[name]) >= self.group:
            self._flush(name)

    def _flush(self, name: str) -> None:
        import pyarrow as pa

        from pipelines.data.corpus_staging import unit_file

        tables = self.pending.pop(name, [])
        if not tables:
            return
        if name not in self.open:
            self.open[name] = self.staging.parquet_writer(unit_file(name, self.unit), staged_schema(name))
        self.open[name][0].write_table(pa.concat_tables(tables).combine_chunks(), row_group_size=self.group)

    def close(self) -> None:
        for name in list(self.pending):
            self._flush(name)
        for writer, handle in self.open.values():
            self.staging.commit_writer(writer, handle)


def ingest_unit(unit: dict, cfg, staging) -> dict:
    """Ray task: one work unit in (with `order`, its position in the plan), its summary out ({unit, records,
    train, val, rejects, node}: rows per staged table); the rows themselves go to the unit's staging files.

    A retried task (its worker died) rewrites its unit's files whole: each staged file appears under its
    name only once complete (`Staging.parquet_writer`).

    Args:
        unit: a work unit (see `sources.plan`) with its `order`.
        cfg: the corpus config.
        staging: the stage's `corpus_staging.Staging`.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray

    from pipelines.data import schema

    node = ray.get_runtime_context().get_node_id()
    src = next(s for s in cfg.sources if s.name == unit["source"])
    corpus_cols = schema.corpus_schema().names
    reject_cols = schema.rejects_schema().names
    order = unit["order"]
    files = _UnitFiles(staging, order)
    records = 0
    for table in unit_results(src, unit, cfg):
        n = table.num_rows
        table = table.append_column("unit", pa.array(np.full(n, order, np.int32))).append_column(
            "idx", pa.array(np.arange(records, records + n, dtype=np.int32)))
        records += n
        bad = pc.not_equal(table.column("reason"), "")
        files.add("rejects", table.filter(bad).select(reject_cols + ["unit", "idx"]))
        ok = table.filter(pc.invert(bad))
        split = pa.array([split_of(s, cfg.val_fraction) for s in ok.column("sample_id").to_pylist()],
                         pa.string())
        ok = ok.append_column("split", split).select(corpus_cols + ["unit", "idx"])
        for name in schema.SPLITS:
            files.add(name, ok.filter(pc.equal(ok.column("split"), name)))
    files.close()
    return {"unit": order, "records": records, "train": files.rows["train"], "val": files.rows["val"],
            "rejects": files.rows["rejects"], "node": node}


def run_ingest(cfg, units: list[dict], staging) -> dict[int, dict]:
    """Run `ingest_unit` over every unit, `cfg.num_workers` at a time (plain Ray tasks: see
    `raycompat.bounded_tasks`); returns unit order -> its summary."""
    from pipelines.data.raycompat import bounded_tasks, ensure_ray_core, pool_task

    ray = ensure_ray_core()
    task = pool_task(ray, ingest_unit)
    cfg_ref, staging_ref = ray.put(cfg), ray.put(staging)
    # every summary names its unit: a finished task need not wait behind a longer earlier one
    out = {s["unit"]: s for _, s in bounded_tasks(ray, task, [(u, cfg_ref, staging_ref) for u in units],
                                                  cfg.num_workers)}
    if len(out) != len(units):
        raise RuntimeError(f"corpus: {len(units) - len(out)} work units returned no summary")
    return out
