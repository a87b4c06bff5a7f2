"""The corpus stage's last pass: staged unit files -> the output's fixed-rows part files, written by tasks.

Part `<table>/part-NNNNN.parquet` holds rows [N * rows_per_file, (N + 1) * rows_per_file) of that
table in the stage's order (units in plan order, records in reader order), with the records past a
source's limit and the duplicates left out: the files a one-process loop would cut from the same
stream, byte for byte, however many workers ran (file boundaries come from per-unit counts alone).
`plan_parts` cuts those ranges from the counts; a `write_parts` task reads only the row groups of
the staged files its part needs, writes the file into the output directory itself when it runs on
the stage process's node (temporary name, then rename), and otherwise sends the encoded file back,
as the shards stage's tasks do. Either way the stage process gets per-part summaries: rows, sha256,
counts by modality and reject reason, the part's first images for the sample grid.
"""

from __future__ import annotations

import os
from collections import Counter

from pipelines.data import schema
from pipelines.data.corpus_staging import TABLES, unit_file


def plan_parts(kept: dict[str, list[tuple[int, int]]], rows_per_file: int) -> list[dict]:
    """kept: table -> [(unit, rows it keeps)] in unit order -> part specs {table, index, path,
    rows, slices: [{unit, start, stop}]} (start / stop: positions among the unit's kept rows)."""
    from pipelines.data.writer import part_path

    parts: list[dict] = []
    for table in TABLES:
        cur = None
        count = 0
        for unit, n in kept.get(table, []):
            start = 0
            while start < n:
                if cur is None or cur["rows"] == rows_per_file:
                    cur = {"table": table, "index": count, "path": part_path(table, count), "rows": 0,
                           "slices": []}
                    parts.append(cur)
                    count += 1
                take = min(n - start, rows_per_file - cur["rows"])
                cur["slices"].append({"unit": unit, "start": start, "stop": start + take})
                cur["rows"] += take
                start += take
    return parts


def output_schema(table: str):
    import pyarrow as pa

    if table == "rejects":
        return schema.rejects_schema()
    if table == "duplicates":
        return pa.schema([("sample_id", pa.string()), ("duplicate_of", pa.string())])
    return schema.corpus_schema()


def _read_kept(staging, table: str, unit: int, start: int, stop: int, cutoff: int, dedup: bool):
    """Kept rows [start, stop) of one unit's staged table: records within the limit, duplicates out."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    with staging.open_input(unit_file(table, unit)) as f:
        pf = pq.ParquetFile(f)
        if table == "duplicates":  # already only the losers, within the limit, sorted by idx
            return pf.read().slice(start, stop - start)
        idx = pf.read(columns=["idx"]).column("idx").to_numpy()
        keep = idx < cutoff
        if dedup and table in schema.SPLITS and staging.exists(unit_file("duplicates", unit)):
            with staging.open_input(unit_file("duplicates", unit)) as d:
                lost = pq.read_table(d, columns=["idx", "split"])
            lost_idx = lost.column("idx").to_numpy()[
                np.asarray(lost.column("split").to_pylist(), dtype=object) == table]
            keep &= ~np.isin(idx, lost_idx)
        rows = np.flatnonzero(keep)[start:stop]  # file rows of the wanted kept rows
        meta = pf.metadata
        ends = np.cumsum([meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        first, last = np.searchsorted(ends, rows[0], "right"), np.searchsorted(ends, rows[-1], "right")
        offset = 0 if first == 0 else int(ends[first - 1])
        groups = pf.read_row_groups(list(range(first, last + 1)))
        return groups.take(pa.array(rows - offset))


def _stats(table, name: str, plot_samples: int) -> dict:
    """What the stage's metrics and artifacts need of one part, before its staging columns go."""
    import pyarrow.compute as pc

    if name == "rejects":
        return {"reasons": dict(Counter(table.column("reason").to_pylist()))}
    if name == "duplicates":
        return {}
    mods = table.column("modalities").to_pylist()
    images = []
    if plot_samples:
        pos = pc.indices_nonzero(pc.is_valid(table.column("image"))).to_pylist()[:plot_samples]
        units, idxs = table.column("unit").to_pylist(), table.column("idx").to_pylist()
        images = [(units[i], idxs[i], i) for i in pos]
    return {"modalities": dict(Counter(m for ms in mods for m in ms)),
            "combinations": dict(Counter("+".join(ms) for ms in mods)), "images": images}


def write_parts(specs: list[dict], staging, cutoffs: list[int], dedup: bool, plot_samples: int,
                out=None) -> list[tuple]:
    """Ray task: some part specs -> per part (summary, file): the summary {table, index, path, rows,
    sha256, stats, node}, and the encoded Parquet file (a pyarrow Buffer, which Ray moves without a copy
    into a `bytes`), or None when this task wrote it into the output directory (it runs on `out`'s node).
    A retried task (its worker died) rewrites its parts whole (`writer.write_part_file`).

    Args:
        specs: `plan_parts` specs, in plan order.
        staging: the stage's `corpus_staging.Staging`.
        cutoffs: per unit, how many of its records are within the source's limit.
        dedup: the config's `dedup`.
        plot_samples: how many images of each part to offer the sample grid.
        out: (the stage process's node id, the output directory), or None (send every file back).
    """
    import hashlib

    import pyarrow as pa
    import ray

    from pipelines.data.writer import encode_parquet, write_part_file

    node = ray.get_runtime_context().get_node_id()
    out_dir = out[1] if out is not None and out[0] == node else None
    results = []
    for spec in specs:
        name = spec["table"]
        table = pa.concat_tables([_read_kept(staging, name, s["unit"], s["start"], s["stop"],
                                             cutoffs[s["unit"]], dedup) for s in spec["slices"]])
        stats = _stats(table, name, plot_samples)
        sch = output_schema(name)
        table = table.select(sch.names).cast(sch)
        file = None
        if out_dir is not None:
            sha256 = write_part_file(table, os.path.join(out_dir, spec["path"]))
        else:
            file = encode_parquet(table)
            sha256 = hashlib.sha256(file).hexdigest()
        results.append(({"table": name, "index": spec["index"], "path": spec["path"], "rows": table.num_rows,
                         "sha256": sha256, "stats": stats, "node": node}, file))
    return results


# Rows of part files per task, at least: a task costs milliseconds to hand out (more on a loaded
# machine); a task of a few thousand photos costs seconds of work.
ROWS_PER_TASK = 4096


def group_tasks(parts: list[dict], workers: int) -> list[list[dict]]:
    """Parts in plan order, cut into consecutive runs of about equal rows: about one task per
    ROWS_PER_TASK rows, and between one and eight tasks per worker."""
    rows = sum(p["rows"] for p in parts)
    workers = max(1, workers)
    n = min(len(parts), max(workers, min(workers * 8, rows // ROWS_PER_TASK)))
    tasks: list[list[dict]] = [[] for _ in range(n)]
    done = 0
    for p in parts:
        tasks[min(n - 1, done * n // max(rows, 1))].append(p)
        done += p["rows"]
    return [t for t in tasks if t]


def run_parts(parts: list[dict], staging, cutoffs: list[int], cfg, out_dir: str, set_rows=None,
              local_writes: bool = True) -> list[dict]:
    """Write every planned part under out_dir (a directory on this node); returns the summaries sorted
    by (table, index). Tasks on this node write their parts themselves (with `local_writes`); the
    files of tasks elsewhere come back and are written here. `set_rows(path, rows, sha256)` records
    each file for the manifest. The tasks are plain Ray tasks, `cfg.num_workers` at a time (see
    `raycompat.bounded_tasks`)."""
    import glob

    from pipelines.data.raycompat import bounded_tasks, ensure_ray_core, pool_task
    from pipelines.data.shards_task import node_id

    if not parts:
        return []
    out_dir = os.path.abspath(out_dir)  # the tasks' working directory is not this one
    ray = ensure_ray_core()
    task = pool_task(ray, write_parts)
    shared = (ray.put(staging), ray.put(cutoffs), cfg.dedup, cfg.plot_samples,
              (node_id(), out_dir) if local_writes else None)
    calls = [(t, *shared) for t in group_tasks(parts, cfg.num_workers)]
    planned = {(p["table"], p["index"]): p["rows"] for p in parts}
    done = []
    for _, results in bounded_tasks(ray, task, calls, cfg.num_workers):
        for res, file in results:
            if res["rows"] != planned[(res["table"], res["index"])]:
                raise RuntimeError(f"corpus: part {res['path']} has {res['rows']} rows, planned "
                                   f"{planned[(res['table'], res['index'])]}")
            if file is not None:  # written by a task on another node: its bytes came back
                os.makedirs(os.path.join(out_dir, res["table"]), exist_ok=True)
                with open(os.path.join(out_dir, res["path"]), "wb") as f:
                    f.write(file)
            res["written_by_task"] = file is None
            if set_rows:
                set_rows(res["path"], res["rows"], res["sha256"])
            done.append(res)
        del results  # a task's returned files are freed before the next task's arrive
    # A worker killed between writing a part's temporary file and renaming it leaves that file
    # behind (its retry writes another): not part of the output.
    for stray in glob.glob(os.path.join(glob.escape(out_dir), "*", "*.parquet.tmp-*")):
        os.remove(stray)
    if len(done) != len(parts):
        raise RuntimeError(f"corpus: {len(parts) - len(done)} planned parts were never written")
    done.sort(key=lambda r: (TABLES.index(r["table"]), r["index"]))
    return done
