"""Fixed-rows Parquet files with deterministic names, written into a stage's output dir.

Why not `Dataset.write_parquet`: its files hold "at least min / at most max" rows per
write task, not a fixed count, and with a FilenameProvider that drops the write
uuid Ray 2.60 refuses APPEND mode. Instead the file boundaries are planned up front:
`part-00000.parquet`, `part-00001.parquet`, ... of exactly `rows_per_file` rows (the
last one short). `PartWriter` cuts an ordered stream of rows in one process (instructions);
the corpus and shards stages' Ray tasks build whole part files (`write_part_file`,
`shards_task.write_part` on disk, `encode_parquet` in memory). All encode with PARQUET_ARGS, so the same rows give the same bytes.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

PARQUET_ARGS = dict(compression="zstd", compression_level=3, use_dictionary=False,
                    write_statistics=False, row_group_size=256)


def encode_parquet(table: pa.Table) -> pa.Buffer:
    """One part file's bytes (what PartWriter writes for the same rows), as the Arrow buffer
    the writer filled: no copy into a `bytes` (a part of photos is tens of MB)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table.combine_chunks(), sink, **PARQUET_ARGS)
    return sink.getvalue()


def write_part_file(table: pa.Table, path: str) -> str:
    """One part file's bytes (`encode_parquet`'s) written to `path` under a temporary name, then renamed:
    a task killed mid-write leaves only `<path>.tmp-<pid>`, which the stage process removes, and its
    retry writes the file whole. Returns the file's sha256."""
    from pipelines.manifest import sha256_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    pq.write_table(table.combine_chunks(), tmp, **PARQUET_ARGS)
    sha256 = sha256_file(tmp)  # just written: read back from the page cache
    os.replace(tmp, path)
    return sha256


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def part_path(prefix: str, index: int) -> str:
    """A part file's path relative to the stage's output dir, e.g. `train/part-00003.parquet`."""
    return f"{prefix}/{part_name(index)}"


class PartWriter:
    """Buffers rows of one table (one split) and writes fixed-size part files.

    Args:
        out_dir: the stage's output directory.
        prefix: sub-directory for these files (`train`, `val`, `rejects`...).
        schema: every file gets exactly this schema (rows are cast to it).
        rows_per_file: rows per file; the last file may have fewer.
        set_rows: callback (relative path, rows) recording each file in the manifest.
    """

    def __init__(self, out_dir: str, prefix: str, schema: pa.Schema, rows_per_file: int,
                 set_rows=None):
        if rows_per_file < 1:
            raise ValueError(f"rows_per_file must be >= 1, got {rows_per_file}")
        self.dir = os.path.join(out_dir, prefix)
        self.prefix = prefix
        self.schema = schema
        self.rows_per_file = rows_per_file
        self.set_rows = set_rows
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.files: list[str] = []
        self.rows = 0

    def add_rows(self, rows: list[dict]) -> None:
        if rows:
            self.add(pa.Table.from_pylist(rows, schema=self.schema))

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self.pending.append(table.select(self.schema.names).cast(self.schema))
        self.pending_rows += table.num_rows
        while self.pending_rows >= self.rows_per_file:
            self._flush(self.rows_per_file)

    def close(self) -> list[str]:
        if self.pending_rows:
            self._flush(self.pending_rows)
        return self.files

    def _flush(self, n: int) -> None:
        table = pa.concat_tables(self.pending)
        head, rest = table.slice(0, n), table.slice(n)
        self.pending = [rest] if rest.num_rows else []
        self.pending_rows = rest.num_rows
        os.makedirs(self.dir, exist_ok=True)
        rel = part_path(self.prefix, len(self.files))
        pq.write_table(head.combine_chunks(), os.path.join(self.dir, part_name(len(self.files))),
                       **PARQUET_ARGS)
        self.files.append(rel)
        self.rows += head.num_rows
        if self.set_rows:
            self.set_rows(rel, head.num_rows)
