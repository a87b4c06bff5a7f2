"""What a suite scores: the rows of one split of a shards or instructions output, chosen in the driver from
their small columns, read with their media by Ray Data.

The choice (filters, limit) is made on the metadata columns only (`sample_id`, `modalities`, `label`,
`source`, `task`, `prompt`, `answer`: no media), read with pyarrow: the same rows on every run, whatever
the number of Ray workers. The media columns are then read by Ray Data and filtered to the chosen ids,
so the driver's memory grows with the number of items, never with their media.
"""

from __future__ import annotations

import numpy as np

from pipelines.data import schema

_META = ("sample_id", "modalities", "label", "source", "task", "prompt", "answer", "text_ids")


def origin_source(row: dict) -> str:
    """The source a row comes from: a shards row's sample id prefix, an instruction row's `source`, or for
    the task prompts over a corpus (`corpus/<task>/<corpus sample id>`) the corpus row's source."""
    sid = row["sample_id"]
    if row.get("source") == "corpus":
        parts = sid.split("/")
        return parts[2] if len(parts) > 3 else sid
    return row.get("source") or sid.split("/", 1)[0]


def split_paths(manifest, split: str) -> list[str]:
    if split not in schema.SPLITS:
        raise ValueError(f"split must be one of {schema.SPLITS}, got {split!r}")
    return manifest.paths(".parquet", prefix=f"{split}/")


def read_meta(manifest, split: str) -> list[dict]:
    """The metadata columns of every row of ``split`` (see the module docs), in file order."""
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for path in split_paths(manifest, split):
        with manifest.storage.open_input(path) as f:
            pf = pq.ParquetFile(f)
            cols = [c for c in _META if c in pf.schema_arrow.names]
            rows += pf.read(columns=cols).to_pylist()
    return rows


def choose(rows: list[dict], *, modalities: tuple[str, ...] = (), exact: bool = False, sources=(), tasks=(),
           labelled: bool = False, limit: int = 0) -> list[dict]:
    """The rows a suite scores, sorted by sample id (the first ``limit`` of them when ``limit``)."""
    want = set(modalities)
    out = [r for r in rows
           if (set(r["modalities"]) == want if exact else want.issubset(r["modalities"]))
           and (not sources or origin_source(r) in sources)
           and (not tasks or r.get("task") in tasks)
           and (not labelled or r.get("label") is not None)]
    out.sort(key=lambda r: r["sample_id"])
    return out[:limit] if limit else out


def read_rows(manifest, split: str, ids: list[str], columns: list[str]):
    """A Ray Dataset of the rows ``ids`` of ``split`` with ``columns`` (and `sample_id`)."""
    from pipelines.data.reader import read_split

    wanted = set(ids)

    def keep(batch):
        import pyarrow as pa
        import pyarrow.compute as pc

        return batch.filter(pc.is_in(batch.column("sample_id"), value_set=pa.array(sorted(wanted), pa.string())))

    cols = sorted(set(columns) | {"sample_id"})
    ds = read_split(manifest, split_paths(manifest, split), split, columns=cols)
    return ds.map_batches(keep, batch_format="pyarrow", batch_size=None)


def media_of(manifest, split: str, ids: list[str], columns: list[str]) -> dict[str, dict]:
    """sample id -> {column: value} for a few rows (report thumbnails), read in the driver."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out: dict[str, dict] = {}
    wanted = pa.array(sorted(set(ids)), pa.string())
    for path in split_paths(manifest, split):
        with manifest.storage.open_input(path) as f:
            pf = pq.ParquetFile(f)
            cols = ["sample_id"] + [c for c in columns if c in pf.schema_arrow.names]
            table = pf.read(columns=cols)
        table = table.filter(pc.is_in(table.column("sample_id"), value_set=wanted))
        out.update({r["sample_id"]: r for r in table.to_pylist()})
    return out


def thumbnail_png(pixels: bytes | None, resolution: int, size: int = 96) -> bytes | None:
    """Stored pixels (uint8 3×R×R) -> a PNG of at most ``size`` px for the report."""
    from pipelines.data.image import pixels_png

    return None if pixels is None else pixels_png(pixels, resolution, size)


def media_digests(manifest, split: str, ids: list[str]) -> dict[str, str]:
    """sample id -> sha1 of its media (pixels, then fbank; "" without media), computed by Ray tasks: equal
    media, equal digest (one image asked several questions, or given several captions, is one item)."""
    import hashlib

    def digest(batch):
        out = []
        for px, fb in zip(batch["pixels"] if "pixels" in batch else [None] * len(batch["sample_id"]),
                          batch["fbank"] if "fbank" in batch else [None] * len(batch["sample_id"])):
            h = hashlib.sha1()
            for part in (px, fb):
                if part is not None:
                    h.update(part if isinstance(part, bytes) else np.asarray(part).tobytes())
            out.append(h.hexdigest() if px is not None or fb is not None else "")
        return {"sample_id": batch["sample_id"], "digest": np.asarray(out, dtype=object)}

    ds = read_rows(manifest, split, ids, ["pixels", "fbank"]).map_batches(digest, batch_format="numpy")
    return {str(r["sample_id"]): str(r["digest"]) for r in ds.iter_rows()}
