"""Body of the `shards` kind: corpus samples -> model-ready Parquet shards per split.

Flow (Ray Data): the driver plans the output files from the corpus -- `<split>/part-NNNNN.parquet`
holds rows [N * rows_per_file, (N + 1) * rows_per_file) of the split, in corpus order -- and
hands them out heaviest first (estimated cost), grouped into Ray Data tasks that shrink as the
work runs out (see `_guided`). A task reads its row slices of the corpus, computes the model
columns (text ids, pixels, visual tokens, log-mel) with the per-sample `Featurizer`, encodes
each whole part it holds: a task on the driver's node writes the file into the stage's
output directory itself and returns its sha256 and counts; a task on another node returns the
file's bytes, which the driver writes. A file's bytes depend on its rows alone, so two runs
give byte-identical shards whatever the scheduling.

Why the worker encodes: the featurized rows are ~5x the encoded file (raw pixels), and
encoding is about a third of the work; on the driver it was a third process competing for two
cores, and every row crossed the object store. Why some parts are still cut into chunks: a
part of 1,024 photos costs ~50x a part of 1,024 text paragraphs, and when one such part is more
than a worker's share of the work left, handing it out whole leaves the other workers idle at
the end. Such a part is cut into chunks of whole `batch_size` batches, handed out one after the
other; their rows travel to the driver (Arrow IPC through the object store), which regroups
them and encodes that file on a background thread while the tasks go on (see `plan_chunks`).
Why tasks, not an actor pool: see `_WORKER_STATE`.
"""

from __future__ import annotations

import itertools
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


# Estimated CPU cost of featurizing one row in a worker, in microseconds of one core, from what
# it carries: a least-squares fit of Featurizer.rows CPU time per 32-row batch over the whole demo
# corpus (R = 224). Used only to cut parts into chunks of similar cost and to order the work; a
# wrong estimate costs balance, never correctness (the earlier constants overestimated images ~2x
# against text, and the last task, eight text parts, ran alone for a third of a second on one
# worker). Media bytes are the corpus' encoded bytes (row-group averages): a big PNG costs more.
ROW_US = 70.0                # corpus row -> Python, text ids, shards row
IMAGE_US = 900.0             # resize to R, pixel bytes
IMAGE_US_PER_BYTE = 0.033    # image decoding
AUDIO_US = 480.0             # resampled waveform -> log-mel bytes
AUDIO_US_PER_BYTE = 0.066    # audio decoding + log-mel (grow with the duration)
# Task sizes (see `_guided`): each task takes about 1 / (workers * GUIDED_SHARE) of the work
# left, and at least 1 / (workers * MIN_TASKS_PER_WORKER) of the whole. Few tasks matter: Ray
# Data notices a finished task on its next scheduling step (every <= 0.1 s) before the worker
# gets the next one.
GUIDED_SHARE = 3
MIN_TASKS_PER_WORKER = 16


def _row_costs(pf, g: int) -> list[float]:
    """Estimated cost (us) of every row of row group `g` of an open corpus ParquetFile."""
    meta = pf.metadata
    names = [meta.schema.column(i).path.split(".")[0] for i in range(meta.num_columns)]
    rg = meta.row_group(g)
    nbytes = Counter()
    for i, name in enumerate(names):
        nbytes[name] += rg.column(i).total_compressed_size
    mods = pf.read_row_group(g, columns=["modalities"]).column("modalities").to_pylist()
    n_img = sum("image" in m for m in mods) or 1
    n_aud = sum("audio" in m for m in mods) or 1
    img = IMAGE_US + IMAGE_US_PER_BYTE * nbytes["image"] / n_img
    aud = AUDIO_US + AUDIO_US_PER_BYTE * nbytes["audio"] / n_aud
    return [ROW_US + (img if "image" in m else 0.0) + (aud if "audio" in m else 0.0)
            for m in mods]


def plan_parts(corpus, split: str, rows_per_file: int) -> list[dict]:
    """The part files of one split, from the corpus' Parquet footers and `modalities` column.

    Returns dicts {split, index, rows, cost, slices: [{path, row_group, start, stop}],
    row_costs}: part `index` holds split rows [index * rows_per_file, ...) in corpus order.
    `cost` and `row_costs` are estimates (us, see ROW_US...) used only to cut and order work.
    """
    import pyarrow.parquet as pq

    parts: list[dict] = []
    cur: dict | None = None
    for path in corpus.paths(".parquet", prefix=f"{split}/"):
        with corpus.storage.open_input(path) as f:
            pf = pq.ParquetFile(f)
            groups = [(g, _row_costs(pf, g)) for g in range(pf.metadata.num_row_groups)]
        for g, costs in groups:
            n = len(costs)
            start = 0
            while start < n:
                if cur is None or cur["rows"] == rows_per_file:
                    cur = {"split": split, "index": len(parts), "rows": 0, "cost": 0.0,
                           "slices": [], "row_costs": []}
                    parts.append(cur)
                take = min(n - start, rows_per_file - cur["rows"])
                cur["slices"].append({"path": path, "row_group": g, "start": start,
                                      "stop": start + take})
                cur["row_costs"] += costs[start:start + take]
                cur["cost"] += sum(costs[start:start + take])
                cur["rows"] += take
                start += take
    return parts


def _cut_slices(slices: list[dict], lo: int, hi: int) -> list[dict]:
    """The sub-slices covering rows [lo, hi) of a part made of `slices`."""
    out, offset = [], 0
    for s in slices:
        n = s["stop"] - s["start"]
        a, b = max(lo, offset), min(hi, offset + n)
        if a < b:
            out.append({**s, "start": s["start"] + a - offset, "stop": s["start"] + b - offset})
        offset += n
    return out


def _guided(remaining: float, total: float, workers: int) -> float:
    """Target cost of the next chunk / task: a share of what is left (guided self-scheduling),
    so the first tasks are long (few hand-outs) and the last ones short (the workers finish
    together), never below a floor that keeps the per-task overhead small."""
    return max(remaining / (workers * GUIDED_SHARE), total / (workers * MIN_TASKS_PER_WORKER))


def plan_chunks(parts: list[dict], batch_size: int, workers: int) -> list[dict]:
    """Cut parts into chunks, in the order they are handed out: parts heaviest first, a part's
    chunks in row order (so heavy parts complete early and the cheap text parts come last).

    A part stays whole (one chunk: the worker that featurizes it also encodes its file) while
    its cost is at most one worker's share of the work left, itself included -- the others
    then have at least as much to do meanwhile -- or below the task floor of `_guided`. A
    heavier part is cut into chunks of whole `batch_size` batches (counted from the part's
    first row) of about `_guided` of the work left each; its rows go to the driver, which
    encodes the file. On the demo corpus every part stays whole (the heaviest, 1,024 photos,
    is ~40% of the work); a corpus of two photo parts and a little text cuts the second.

    Returns dicts {split, index, chunk, chunks, rows, cost, slices}.
    """
    total = remaining = sum(p["cost"] for p in parts)
    chunks: list[dict] = []
    for part in sorted(parts, key=lambda p: (-p["cost"], p["split"], p["index"])):
        mine, n = [], part["rows"]
        whole = part["cost"] <= max(remaining / workers, total / (workers * MIN_TASKS_PER_WORKER))
        upto = [0.0, *itertools.accumulate(part["row_costs"])]  # upto[i]: cost of rows [0, i)
        lo = 0
        while lo < n:
            target = _guided(remaining, total, workers)
            hi = lo
            while hi < n and (whole or hi == lo or upto[hi] - upto[lo] < target):
                hi = min(n, hi + batch_size)
            if upto[n] - upto[hi] < target / 2:  # no small remainder chunk: it would end the part late
                hi = n
            acc = upto[hi] - upto[lo]
            mine.append({"split": part["split"], "index": part["index"], "chunk": len(mine),
                         "rows": hi - lo, "cost": acc,
                         "slices": _cut_slices(part["slices"], lo, hi)})
            remaining -= acc
            lo = hi
        for c in mine:
            c["chunks"] = len(mine)
        chunks += mine
    return chunks


def plan_tasks(chunks: list[dict], workers: int) -> list[list[dict]]:
    """Group consecutive chunks into Ray tasks of about `_guided` cost each (a chunk is never
    split; cheap text parts share tasks instead of one task each)."""
    total = remaining = sum(c["cost"] for c in chunks)
    tasks: list[list[dict]] = []
    acc = target = 0.0
    for c in chunks:
        if not tasks or acc + c["cost"] > target * 1.25:
            tasks.append([])
            acc, target = 0.0, _guided(remaining, total, workers)
        tasks[-1].append(c)
        acc += c["cost"]
        remaining -= c["cost"]
    return tasks


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


def worker_state(spm_model: bytes, cfg: ShardsConfig, storage_uri: str, visual_manifest=None):
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
    block and from the object store to the driver's file without a copy. Pickled with the
    stats, it was copied twice more in the task and once in the driver (tens of MB per part of
    photos); on the bench's demo corpus the driver then took 0.45-0.68 CPU-s and 24k page
    faults per run, and now 0.36-0.55 CPU-s and 12k."""
    import pyarrow as pa

    return pa.schema([("chunk_id", pa.int32()), ("file", pa.large_binary()),
                      ("part", pa.large_binary()), ("rows", pa.large_binary())])


def _binary_cell(data):
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


def featurize_chunks(batch, *, spm_model: bytes, cfg: ShardsConfig, storage_uri: str,
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
    if out is not None and out[0] == _node_id():
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
            yield pa.table([pa.array([spec["id"]], pa.int32()), _binary_cell(file),
                            _binary_cell(part), _binary_cell(rows)], schema=sch)


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def iter_parts(corpus, spm_model: bytes, cfg: ShardsConfig, splits=schema.SPLITS, visual=None,
               out_dir: str | None = None):
    """Build every part file of the given splits with Ray Data tasks: whole parts encoded by
    the task that featurized them, cut parts regrouped and encoded on a driver thread.

    Yields (part spec, result) per part as parts finish (any order); `result` is
    `encode_part`'s dict: `result["data"]` is the encoded Parquet file (an Arrow buffer, often
    a view into the object-store block it came in), or None when a task on this node already
    wrote it to `<out_dir>/<split>/part-NNNNN.parquet` (only with `out_dir`). One dataset for
    all splits, so the workers set up (tokenizers) once.
    """
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa

    from pipelines.data.raycompat import ensure_ray, no_ramp_up, task_pool
    from pipelines.data.writer import part_path

    parts = [p for split in splits for p in plan_parts(corpus, split, cfg.rows_per_file)]
    if not parts:
        return
    specs = {(p["split"], p["index"]): p for p in parts}
    workers = max(1, cfg.num_workers)
    chunks = plan_chunks(parts, cfg.batch_size, workers)
    tasks = plan_tasks(chunks, workers)
    ray = ensure_ray()
    for i, c in enumerate(chunks):
        c["id"] = i
    items = [{"chunks": json.dumps([{"id": c["id"], "whole": c["chunks"] == 1,
                                     "path": part_path(c["split"], c["index"]),
                                     "slices": c["slices"]} for c in task])}
             for task in tasks]
    out = None if out_dir is None else (_node_id(), out_dir)
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # tasks, not an actor pool: see _WORKER_STATE
    ds = ds.map_batches(featurize_chunks, batch_size=1, batch_format="pyarrow",
                        fn_kwargs={"spm_model": spm_model, "cfg": cfg,
                                   "storage_uri": corpus.storage_uri, "visual_manifest": visual,
                                   "out": out},
                        num_cpus=1, compute=task_pool(ray, workers, len(items)))
    ds = no_ramp_up(ds)
    # every chunk carries its id, so output order is free: with Ray Data's default ordered
    # output (set by ensure_ray) a finished task's parts waited behind a longer earlier task
    ds.context.execution_options.preserve_order = False
    pieces: dict[int, object] = {}    # chunk id -> featurized rows of a cut part's chunk
    done_chunks: Counter = Counter()  # part key -> chunks received
    # pyarrow's Parquet writer releases the GIL: encoding overlaps with receiving chunks
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shards-encode") as encoder:
        futures: list = []

        def finished(block: bool):
            while futures and (block or futures[0][1].done()):
                key, fut = futures.pop(0)
                yield specs[key], fut.result()

        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for cid, file, part, rows in zip(block.column("chunk_id").to_pylist(),
                                             block.column("file"), block.column("part"),
                                             block.column("rows")):
                c = chunks[cid]
                key = (c["split"], c["index"])
                done_chunks[key] += 1
                if part.is_valid:  # a whole part, encoded (and maybe written) by its task
                    # the file stays in the block (the object store's memory) until written
                    yield specs[key], {**pickle.loads(part.as_buffer()),
                                       "data": file.as_buffer() if file.is_valid else None}
                    continue
                pieces[cid] = pa.ipc.open_stream(rows.as_buffer()).read_all()
                if done_chunks[key] == c["chunks"]:  # the cut part is complete: encode it
                    first = cid - c["chunk"]     # a part's chunks have consecutive ids
                    table = pa.concat_tables([pieces.pop(i)
                                              for i in range(first, first + c["chunks"])])
                    futures.append((key, encoder.submit(encode_part, table, cfg.plot_samples)))
            yield from finished(block=False)
        yield from finished(block=True)
    if pieces or any(done_chunks[(c["split"], c["index"])] != c["chunks"] for c in chunks):
        raise RuntimeError("shards: some parts never received all their chunks")


def write_shards(corpus, spm_model: bytes, cfg: ShardsConfig, out_dir: str, set_rows=None,
                 splits=schema.SPLITS, visual=None, local_writes: bool = True) -> list[dict]:
    """Write `<split>/part-NNNNN.parquet` under out_dir (a directory on this node); returns
    the results sorted by (split, index), each {split, index, path, rows, sha256, stats,
    plots, written_by_task} without the bytes. With `local_writes`, tasks on this node write
    their whole parts there themselves; without, every file comes back to this process (as
    from other nodes). `set_rows(path, rows, sha256)` records each file for the manifest."""
    import glob

    from pipelines.data.writer import part_path

    out_dir = os.path.abspath(out_dir)  # the tasks' working directory is not this one
    done = []
    for spec, res in iter_parts(corpus, spm_model, cfg, splits, visual,
                                out_dir if local_writes else None):
        if res["rows"] != spec["rows"]:
            raise RuntimeError(f"shards: part {spec['split']}/{spec['index']} has {res['rows']} "
                               f"rows, planned {spec['rows']}")
        rel = part_path(spec["split"], spec["index"])
        if res["data"] is not None:
            os.makedirs(os.path.join(out_dir, spec["split"]), exist_ok=True)
            with open(os.path.join(out_dir, rel), "wb") as f:
                f.write(res["data"])
        if set_rows:
            set_rows(rel, res["rows"], res["sha256"])
        done.append({"split": spec["split"], "index": spec["index"], "path": rel,
                     "rows": res["rows"], "sha256": res["sha256"], "stats": res["stats"],
                     "plots": res["plots"], "written_by_task": res["data"] is None})
    # A worker killed between writing a part's temporary file and renaming it leaves that file
    # behind (its retry writes another): not part of the output.
    for stray in glob.glob(os.path.join(glob.escape(out_dir), "*", "*.parquet.tmp-*")):
        os.remove(stray)
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
