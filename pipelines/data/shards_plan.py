"""Planning the shards stage's work: which corpus rows make each part file, and how to hand them out.

Part `<split>/part-NNNNN.parquet` holds rows [N * rows_per_file, (N + 1) * rows_per_file) of the split,
in corpus order. Parts are handed out heaviest first (estimated cost), grouped into Ray tasks that
shrink as the work runs out (see `_guided`). Why some parts are cut into chunks: a part of 1,024
photos costs ~50x a part of 1,024 text paragraphs, and when one such part is more than a worker's
share of the work left, handing it out whole leaves the other workers idle at the end. Such a part is
cut into chunks of whole `batch_size` batches, handed out one after the other (see `plan_chunks`).
Everything here reads only Parquet footers and the `modalities` column: no media is decoded.
"""

from __future__ import annotations

import itertools
from collections import Counter


# Estimated CPU cost of featurizing one row in a worker, in microseconds of one core, from what
# it carries: a least-squares fit of Featurizer.rows CPU time per 32-row batch over the whole demo
# corpus (R = 224). Used only to cut parts into chunks of similar cost and to order the work; a
# wrong estimate costs balance, never correctness. Media bytes are the corpus' encoded bytes
# (row-group averages): a big PNG costs more.
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
