"""What a suite scores: the rows of one split of a shards or instructions output, chosen in the driver from
their small columns, read with their media by Ray Data.

The choice (filters, limit) is made on the metadata columns only (`sample_id`, `modalities`, `label`,
`source`, `task`, `prompt`, `answer`: no media), read with pyarrow: the same rows on every run, whatever
the number of Ray workers. The media columns are then read by Ray Data and filtered to the chosen ids,
so the driver's memory grows with the number of items, never with their media.
"""

from __future__ import annotations

import io

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
    if pixels is None:
        return None
    from PIL import Image

    arr = np.frombuffer(pixels, dtype=np.uint8).reshape(3, resolution, resolution).transpose(1, 2, 0)
    img = Image.fromarray(np.ascontiguousarray(arr))
    if resolution > size:
        img = img.resize((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def content_groups(rows: list[dict], keys) -> list[int]:
    """Per row, a group id equal for rows sharing any of their ``keys(row)`` values (a caption, a media
    hash): the positives of retrieval, so that several captions of one image, and one caption of several
    images, all count (CLIP_benchmark's semantics). Union-find over the key values."""
    parent = list(range(len(rows)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict = {}
    for i, r in enumerate(rows):
        for k in keys(r):
            if k is None:
                continue
            j = first.setdefault(k, i)
            a, b = find(i), find(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    roots: dict[int, int] = {}
    return [roots.setdefault(find(i), len(roots)) for i in range(len(rows))]
