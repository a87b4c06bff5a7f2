"""The shards stage's Ray task: corpus row slices -> featurized rows -> encoded (and written) part files.

A task reads its row slices of the corpus, computes the model columns (text ids, pixels, visual
tokens, log-mel) with the per-sample `Featurizer`, and encodes each whole part it holds: on the
node that runs the stage it writes the file into the output directory itself and returns its sha256
and counts; on another node it returns the file's bytes. A chunk of a cut part comes back as its
featurized rows (Arrow IPC) for the stage process to regroup. A file's bytes depend on its rows
alone, so two runs give byte-identical shards whatever the scheduling.

Why the task encodes: the featurized rows are ~5x the encoded file (raw pixels), and encoding is
about a third of the work; done in the stage process, it would compete with the workers for the
cores, and every row would cross the object store. Why tasks, not an actor pool: see `_WORKER_STATE`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Iterator

from pipelines.data import schema


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


def read_slices(storage, slices: list[dict], last: dict | None = None) -> list[dict]:
    """Corpus rows of `slices` [{path, row_group, start, stop}], in order.

    `last` keeps the most recently read row group between calls: a corpus row group (256 rows)
    holds several chunks of photos, and a worker gets a part's chunks in row order, so the next
    chunk mostly needs the row group the previous one read."""
    import pyarrow.parquet as pq

    last = {} if last is None else last
    rows: list[dict] = []
    for s in slices:
        key = (s["path"], s["row_group"])
        if last.get("key") != key:
            f = storage.open_input(s["path"]) if storage else open(s["path"], "rb")
            with f:
                last.update(key=key, table=pq.ParquetFile(f).read_row_group(s["row_group"]))
        rows += last["table"].slice(s["start"], s["stop"] - s["start"]).to_pylist()
    return rows


# What a worker process keeps between tasks: Ray reuses its task workers across tasks and
# across datasets, so the tokenizers load (and the modules import) once per process -- and a
# process that already ran Ray Data work (the corpus stage, an earlier run) starts at once,
# where a fresh actor pays ~2 CPU-seconds of imports. One entry: another run's key replaces it.
_WORKER_STATE: dict = {}


def worker_state(spm_model: bytes, cfg, storage_uri: str, visual_manifest=None):
    """(Featurizer, Storage or None, the last-row-group cache of `read_slices`) for these arguments,
    built on first use in this process."""
    import hashlib

    key = (hashlib.sha256(spm_model).hexdigest(), repr(cfg), storage_uri,
           None if visual_manifest is None else visual_manifest.fingerprint)
    if _WORKER_STATE.get("key") != key:
        from pipelines.data.featurize import Featurizer, load_visual_encoder
        from pipelines.storage import Storage

        _WORKER_STATE.clear()
        visual = load_visual_encoder(visual_manifest) if visual_manifest is not None else None
        _WORKER_STATE.update(key=key, featurizer=Featurizer(spm_model, cfg, visual),
                             storage=Storage(storage_uri) if storage_uri else None, last_row_group={})
    return _WORKER_STATE["featurizer"], _WORKER_STATE["storage"], _WORKER_STATE["last_row_group"]


def encode_part(table, plot_samples: int) -> dict:
    """A complete part's table -> {data (the Parquet file, an Arrow buffer), sha256, rows,
    stats, plots}."""
    import hashlib

    from pipelines.data.writer import encode_parquet

    data = encode_parquet(table)
    return {"data": data, **_part_result(table, hashlib.sha256(data).hexdigest(), plot_samples)}


def _part_result(table, sha256: str, plot_samples: int) -> dict:
    """{sha256, rows, stats, plots} of a complete part's table and file."""
    stats = part_stats(table, plot_samples)
    return {"sha256": sha256, "rows": table.num_rows,
            "stats": {k: v for k, v in stats.items() if k != "plots"}, "plots": stats["plots"]}


def write_part(table, path: str, plot_samples: int) -> dict:
    """A complete part's table -> the Parquet file at `path` (written under a temporary name,
    then renamed: a retried task rewrites it whole); returns `encode_part`'s dict without
    `data`. The same bytes as `encode_part`'s.

    Why a file and not `encode_part` when the task runs beside the output directory: the
    in-memory file grows by doubling (fresh memory for tens of MB per part of photos), is
    copied into the object store, read and written again by the driver. Written here, it goes
    through the page cache once, as the single-process `PartWriter` writes it."""
    import pyarrow.parquet as pq

    from pipelines.data.writer import PARQUET_ARGS
    from pipelines.manifest import sha256_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    pq.write_table(table.combine_chunks(), tmp, **PARQUET_ARGS)
    sha256 = sha256_file(tmp)  # just written: read back from the page cache
    os.replace(tmp, path)
    return _part_result(table, sha256, plot_samples)


def task_output_schema():
    """What a `featurize_chunks` task yields, one row per chunk: for a whole part, `part`
    (`encode_part`'s result but the file, pickled: sha256, rows, stats, plots) and `file`, the
    encoded Parquet file, or null when the task wrote it into the output directory itself
    (see `write_part`); for a chunk of a cut part, `rows`, an Arrow IPC stream of its
    featurized rows for the driver to regroup. One schema for both, so Ray Data may merge a
    task's rows into blocks freely.

    Why the file is a column of its own: it goes from the Parquet writer's buffer into the
    block and from the object store to the driver's file without a copy; pickled with the
    stats, it would be copied twice more in the task and once in the driver (tens of MB per
    part of photos)."""
    import pyarrow as pa

    return pa.schema([("chunk_id", pa.int32()), ("file", pa.large_binary()),
                      ("part", pa.large_binary()), ("rows", pa.large_binary())])


def binary_cell(data):
    """A one-value large_binary array over `data` (bytes or pyarrow Buffer), without a copy."""
    import pyarrow as pa

    if data is None:
        return pa.nulls(1, pa.large_binary())
    buf = pa.py_buffer(data)
    offsets = pa.array([0, buf.size], pa.int64()).buffers()[1]
    return pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, buf])


def _ipc_bytes(table):
    """A table as one Arrow IPC stream buffer (uncompressed: it stays in this node's memory)."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def featurize_chunks(batch, *, spm_model: bytes, cfg, storage_uri: str,
                     visual_manifest=None, out=None) -> Iterator:
    """Ray Data task: a batch of tasks (JSON lists of chunk specs) -> one row per chunk (see
    `task_output_schema`): a whole part is encoded here, in parallel, not on the driver, and
    written by this task when it runs on the driver's node (`out`), else sent back as its
    encoded Parquet file (~1/5 of the featurized rows' size); a chunk of a cut part comes back
    as its featurized rows.

    Args:
        batch: pyarrow table with a `chunks` column (JSON list of {id, whole, path, slices};
            `path`: the part file's path under the output directory).
        spm_model: sentencepiece model bytes.
        cfg: the shards config.
        storage_uri: storage root the corpus files live in.
        visual_manifest: the visual tokenizer's manifest, or None.
        out: (driver's node id, output directory) to write whole parts into when this task
            runs on that node, or None (send every file back).
    """
    import pickle

    import pyarrow as pa

    featurizer, storage, last = worker_state(spm_model, cfg, storage_uri, visual_manifest)
    out_dir = None
    if out is not None and out[0] == node_id():
        out_dir = out[1]
    sch = task_output_schema()
    for task_json in batch.column("chunks").to_pylist():
        for spec in json.loads(task_json):
            table = featurize_table(featurizer, read_slices(storage, spec["slices"], last),
                                    cfg.batch_size)
            file = part = rows = None
            if spec["whole"] and out_dir is not None:
                res = write_part(table, os.path.join(out_dir, spec["path"]), cfg.plot_samples)
                part = pickle.dumps(res, protocol=pickle.HIGHEST_PROTOCOL)
            elif spec["whole"]:
                res = encode_part(table, cfg.plot_samples)
                file = res.pop("data")
                part = pickle.dumps(res, protocol=pickle.HIGHEST_PROTOCOL)
            else:
                rows = _ipc_bytes(table)
            yield pa.table([pa.array([spec["id"]], pa.int32()), binary_cell(file),
                            binary_cell(part), binary_cell(rows)], schema=sch)


def node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()
