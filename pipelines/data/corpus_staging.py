"""Where the corpus stage's tasks leave per-unit tables between its passes: a staging directory in storage.

    <storage>/<pipeline>/<stage>/_tmp/<key>-staging-<id>/
        train/<unit>.parquet  val/<unit>.parquet      accepted rows of one work unit, with `unit`, `idx`
        rejects/<unit>.parquet                        its rejects, with `idx`
        duplicates/<unit>.parquet                     its rows that lost to an earlier copy (dedup pass)

`idx` is a record's position in its unit (rejects included): with the unit's position in the plan it
is the order the stage has always used (limits, first copy wins). The directory lives in the storage
root, not on the stage process's disk, because tasks on every node write and read it: a local root is
a directory all nodes see (as the shards stage already needs to read the corpus), a URI root is the
object store itself. It is not part of the output and is removed when the stage ends, whatever the
outcome; `Storage.clean_tmp` removes one a killed stage process left.
"""

from __future__ import annotations

import os
import uuid

from pipelines.storage import Storage

TABLES = ("train", "val", "rejects", "duplicates")
# Staging files are read once or twice, soon after: a fast codec, small row groups (a part task reads
# only the row groups that hold its rows).
STAGING_ARGS = dict(compression="lz4", use_dictionary=False, write_statistics=False)
STAGING_ROW_GROUP = 64


def unit_file(table: str, unit: int) -> str:
    """A staging file's path relative to the staging directory."""
    return f"{table}/{unit:06d}.parquet"


class Staging:
    """A staging directory: atomic writes of whole files, reads, removal; on a local path or a URI.

    Args:
        storage_uri: the storage root (a local path or a `pyarrow.fs` URI).
        path: the staging directory inside it (a path of that filesystem, see `Staging.new`).
    """

    def __init__(self, storage_uri: str, path: str):
        self.storage_uri = storage_uri
        self.path = path
        self._storage = None

    @classmethod
    def new(cls, storage_uri: str, pipeline: str, stage: str, key: str) -> "Staging":
        storage = Storage(storage_uri)
        path = f"{storage.stage_dir(pipeline, stage)}/_tmp/{key}-staging-{uuid.uuid4().hex[:12]}"
        if storage.local:
            os.makedirs(path)
        else:
            storage._fs.create_dir(path, recursive=True)
        return cls(storage.uri_root if not storage.local else storage.root, path)

    def __reduce__(self):  # ship by root and path; the filesystem rebuilds where it is used
        return (Staging, (self.storage_uri, self.path))

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = Storage(self.storage_uri)
        return self._storage

    def full(self, rel: str) -> str:
        return f"{self.path}/{rel}"

    def filesystem(self):
        """The pyarrow filesystem for `ray.data.read_parquet` (None: local paths)."""
        return None if self.storage.local else self.storage._fs

    def parquet_writer(self, rel: str, schema):
        """A `pq.ParquetWriter` whose file appears under `rel` only once `commit_writer` closes it: on a
        local root it writes `<file>.tmp-<pid>` and renames (a killed task leaves only that temporary
        name, which nothing reads); an object store publishes an upload whole when it completes."""
        import pyarrow.parquet as pq

        full = self.full(rel)
        if self.storage.local:
            os.makedirs(os.path.dirname(full), exist_ok=True)
            tmp = f"{full}.tmp-{os.getpid()}"
            return pq.ParquetWriter(tmp, schema, **STAGING_ARGS), (tmp, full)
        self.storage._fs.create_dir(full.rsplit("/", 1)[0], recursive=True)  # a no-op on object stores
        sink = self.storage._fs.open_output_stream(full)
        return pq.ParquetWriter(sink, schema, **STAGING_ARGS), (sink, full)

    def commit_writer(self, writer, handle) -> None:
        writer.close()
        if self.storage.local:
            os.replace(*handle)
        else:
            handle[0].close()

    def write_table(self, rel: str, table) -> None:
        writer, handle = self.parquet_writer(rel, table.schema)
        writer.write_table(table, row_group_size=STAGING_ROW_GROUP)
        self.commit_writer(writer, handle)

    def exists(self, rel: str) -> bool:
        return self.storage.file_state(self.full(rel)) is not None

    def open_input(self, rel: str):
        return self.storage.open_input(self.full(rel))

    def remove(self) -> None:
        if self.storage.local:
            import shutil

            shutil.rmtree(self.path, ignore_errors=True)
            return
        try:
            self.storage._fs.delete_dir(self.path)
        except (FileNotFoundError, OSError):
            pass
