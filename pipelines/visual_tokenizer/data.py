"""Corpus images -> Ray datasets of model-resolution pixels for tokenizer training and validation.

Units are (corpus file, row group); each Ray task reads the `image` column of
its units and decodes with the shards stage's own resize (`pipelines.data.image.image_pixels`), so the
tokenizer trains on exactly the pixels it will later tokenize.
"""

from __future__ import annotations

import numpy as np


def plan_units(corpus, split: str) -> list[dict]:
    """(corpus file, row group) units of one split, in corpus order."""
    import pyarrow.parquet as pq

    units = []
    for path in corpus.paths(".parquet", prefix=f"{split}/"):
        with corpus.storage.open_input(path) as f:
            groups = pq.ParquetFile(f).metadata.num_row_groups
        units += [{"path": path, "row_group": g} for g in range(groups)]
    return units


def decode_units(batch: dict, *, storage_uri: str, resolution: int):
    """Ray Data batch of units {"path", "row_group"} -> {"pixels": (n, 3, R, R) uint8} (a pyarrow table of
    zero rows for units without images)."""
    import pyarrow.parquet as pq

    from pipelines.data.image import image_pixels
    from pipelines.storage import Storage

    storage = Storage(storage_uri) if storage_uri else None
    out = []
    for path, group in zip(batch["path"], batch["row_group"]):
        f = storage.open_input(str(path)) if storage else open(str(path), "rb")
        with f:
            images = pq.ParquetFile(f).read_row_group(int(group), columns=["image"]).column("image")
        out += [image_pixels(b, resolution) for b in images.to_pylist() if b is not None]
    if not out:
        # a unit without images (text or audio rows only): zero rows, as a tensor column Ray Data can store;
        # a (0, 3, R, R) array it cannot convert to Arrow, and it would pickle the whole column instead
        import pyarrow as pa
        from ray.data.extensions import ArrowTensorArray

        return pa.table({"pixels": ArrowTensorArray.from_numpy(np.zeros((0, 3, resolution, resolution), np.uint8))})
    return {"pixels": np.stack(out)}  # (n, 3, R, R) uint8


def image_dataset(corpus, split: str, resolution: int, limit: int = 0, shuffle_seed: int | None = None,
                  cache: bool = True):
    """A Ray dataset with one `pixels` (3, R, R) uint8 row per image of `split`, or None if it has none.

    Args:
        corpus: the corpus manifest.
        split: "train" or "val".
        resolution: R.
        limit: keep the first `limit` images (0 = all).
        shuffle_seed: shuffle once with this seed (None = corpus order).
        cache: materialize (decode once; later epochs read the object store).
    """
    from pipelines.data.raycompat import ensure_ray

    units = plan_units(corpus, split)
    if not units:
        return None
    ray = ensure_ray()
    ds = ray.data.from_items(units, override_num_blocks=len(units))
    ds = ds.map_batches(decode_units, batch_size=1, batch_format="numpy",
                        fn_kwargs={"storage_uri": corpus.storage_uri, "resolution": resolution})
    if limit:
        ds = ds.limit(limit)
    if shuffle_seed is not None:
        ds = ds.random_shuffle(seed=shuffle_seed)
    if cache:
        ds = ds.materialize()
    return ds
