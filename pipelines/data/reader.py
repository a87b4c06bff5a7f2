"""The reader API: a shards manifest -> a Ray Dataset for one split and modality mix.

    ds = read_shards(manifest, split="train", modalities=["image", "text"])

Rows follow `schema.shards_schema()`; `decode_pixels` / `decode_fbank` turn the
binary columns back into arrays. A manifest whose schema version this code does not
know is refused rather than misread.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from pipelines.data import schema
from pipelines.data.fbank import decode_fbank  # noqa: F401 - part of the reader API
from pipelines.data.schema import UnknownSchemaVersion  # noqa: F401 - part of the reader API


def shard_paths(manifest, split: str) -> list[str]:
    schema.check_shards(manifest)
    if split not in schema.SPLITS:
        raise ValueError(f"split must be one of {schema.SPLITS}, got {split!r}")
    return manifest.paths(".parquet", prefix=f"{split}/")


def _has_modalities(wanted: frozenset, exact: bool):
    def keep(batch):
        import pyarrow as pa

        mask = [(set(m) == wanted) if exact else wanted.issubset(m)
                for m in batch.column("modalities").to_pylist()]
        return batch.filter(pa.array(mask, pa.bool_()))

    return keep


def read_shards(manifest, split: str = "train", modalities: Optional[Sequence[str]] = None, *,
                exact: bool = False, columns: Optional[list[str]] = None):
    """Shards of one split as a Ray Dataset.

    Args:
        manifest: the shards stage's `Manifest`.
        split: `train` or `val`.
        modalities: keep rows that have all of these (e.g. ["image", "text"] for pairs);
            None keeps every row.
        exact: with `modalities`, keep only rows with exactly that set.
        columns: project to these columns (the filter column is read regardless).
    Raises:
        UnknownSchemaVersion: the manifest's schema version is not one this code knows.
    """
    return read_split(manifest, shard_paths(manifest, split), split, modalities, exact=exact, columns=columns)


def read_split(manifest, paths: list[str], split: str, modalities: Optional[Sequence[str]] = None, *,
               exact: bool = False, columns: Optional[list[str]] = None):
    """The Parquet files ``paths`` of a stage output with a `modalities` column (shards, instructions) as a
    Ray Dataset, filtered and projected as `read_shards` says; the caller checked the schema version."""
    import ray

    from pipelines.data.raycompat import ensure_ray

    if not paths:
        raise ValueError(f"{manifest.dir}: no {split!r} files")
    wanted = frozenset(modalities or ())
    bad = wanted - set(schema.MODALITIES)
    if bad:
        raise ValueError(f"unknown modalities {sorted(bad)}; known: {schema.MODALITIES}")
    ensure_ray()
    storage = manifest.storage
    read_cols = None if columns is None else sorted(set(columns) | ({"modalities"} if wanted else set()))
    ds = ray.data.read_parquet(paths, filesystem=None if storage.local else storage._fs,
                               schema=None)
    if read_cols is not None:  # Ray Data pushes the projection into the read (columns= is deprecated)
        ds = ds.select_columns(read_cols)
    if wanted:
        ds = ds.map_batches(_has_modalities(wanted, exact), batch_format="pyarrow",
                            batch_size=None)
        if columns is not None and "modalities" not in columns:
            ds = ds.drop_columns(["modalities"])
    return ds


def decode_pixels(data: bytes, resolution: int) -> np.ndarray:
    """`pixels` bytes -> uint8 (3, R, R)."""
    return np.frombuffer(data, dtype=np.uint8).reshape(3, resolution, resolution)
