"""The corpus stage's Ray work: source units -> decoded, validated result rows, in a fixed order.

`iter_results` runs one `read_and_normalize` Ray task per work unit (a file or a group of files, see
`sources.plan`) and yields their rows in unit order; `split_of` is the deterministic train / val split.
"""

from __future__ import annotations

import hashlib
from typing import Iterator


def split_of(sample_id: str, val_fraction: float) -> str:
    """Deterministic split: the first 8 bytes of sha256(sample_id) as a fraction in [0, 1)."""
    x = int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "big") / 2.0 ** 64
    return "val" if x < val_fraction else "train"


def read_and_normalize(batch, *, cfg) -> Iterator:
    """Ray Data task: work units in, result tables (schema RESULT_SCHEMA) out.

    Reading and normalising share a task so no separate read task competes for CPUs; a
    unit's records are emitted in chunks of `batch_size`. A task, not an actor: Ray keeps
    task worker processes between datasets, so the next Ray Data stage (shards, the visual
    tokenizer's image decoding) finds workers that have already imported Ray Data and the
    decoders instead of starting actors from scratch.

    Args:
        batch: pyarrow table of work units (see `sources.plan`).
        cfg: the corpus config.
    """
    from pipelines.data import sources
    from pipelines.data.normalize import normalize_record
    from pipelines.data.tables import results_table

    by_name = {s.name: s for s in cfg.sources}
    for unit in batch.to_pylist():
        src = by_name[unit["source"]]
        require = tuple(src.require)
        rows = []
        for rec in sources.read(src, unit):
            rows.append(normalize_record(rec, cfg, require))
            if len(rows) >= cfg.batch_size:
                yield results_table(rows)
                rows = []
        if rows:
            yield results_table(rows)


def iter_results(cfg) -> Iterator[dict]:
    """All result rows of all sources, in a deterministic order (Ray tasks do the work)."""
    from pipelines.data import sources
    from pipelines.data.raycompat import ensure_ray, no_ramp_up, task_pool

    units = [u for s in cfg.sources for u in sources.plan(s)]
    ray = ensure_ray()
    # One unit per block, so the tasks share the units out one at a time.
    ds = ray.data.from_items(units, override_num_blocks=len(units))
    ds = ds.map_batches(read_and_normalize, fn_kwargs={"cfg": cfg}, batch_size=1,
                        batch_format="pyarrow", num_cpus=1,
                        compute=task_pool(ray, cfg.num_workers, len(units)))
    ds = no_ramp_up(ds)
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield from batch.to_pylist()
