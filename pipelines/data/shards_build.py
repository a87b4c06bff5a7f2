"""The shards stage process's side: plan, run the Ray tasks, write or regroup what they return.

    corpus manifest --shards_plan--> parts, chunks, tasks --Ray Data map_batches (shards_task)-->
    per chunk: a written part (sha256, counts) | a part's file bytes | a cut part's rows
    --> the part files under the output directory, byte-identical to a one-process loop's

A cut part is complete once all its chunks arrived: its rows are concatenated and encoded on a
background thread while the tasks go on.
"""

from __future__ import annotations

import json
import os

from pipelines.data import schema
from pipelines.data.shards_plan import plan_chunks, plan_parts, plan_tasks
from pipelines.data.shards_task import encode_part, featurize_chunks, node_id


def iter_parts(corpus, spm_model: bytes, cfg, splits=schema.SPLITS, visual=None,
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
    from collections import Counter
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
    out = None if out_dir is None else (node_id(), out_dir)
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # tasks, not an actor pool: see shards_task._WORKER_STATE
    ds = ds.map_batches(featurize_chunks, batch_size=1, batch_format="pyarrow",
                        fn_kwargs={"spm_model": spm_model, "cfg": cfg,
                                   "storage_uri": corpus.storage_uri, "visual_manifest": visual,
                                   "out": out},
                        num_cpus=1, compute=task_pool(ray, workers, len(items)))
    ds = no_ramp_up(ds)
    # every chunk carries its id, so output order is free: ordered output (ensure_ray's default)
    # would hold a finished task's parts behind a longer earlier task
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


def write_shards(corpus, spm_model: bytes, cfg, out_dir: str, set_rows=None,
                 splits=schema.SPLITS, visual=None, local_writes: bool = True) -> list[dict]:
    """Write `<split>/part-NNNNN.parquet` under out_dir (a directory on this node); returns
    the results sorted by (split, index), each {split, index, path, rows, sha256, stats,
    plots, written_by_task} without the bytes. With `local_writes`, tasks on this node write
    their whole parts there themselves; without, every file comes back to this process (as
    from other nodes). `set_rows(path, rows, sha256)` records each file for the manifest."""
    import glob

    from pipelines.data.writer import part_path

    if cfg.image_resolution is None:  # the stage fills it in; a caller without one gets a clear error
        raise ValueError("write_shards: cfg.image_resolution is unset (the shards stage takes it from the "
                         "visual tokenizer, else 224): set it")
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
