"""Training ingest: small sample groups are read once into the object store, large ones are streamed,
and the estimate behind that choice follows the shards' real column sizes."""

from __future__ import annotations

import pyarrow as pa
import pytest

from omniway_shard_fixtures import RESOLUTION, shards_manifest, write_shards


def task_for(tmp_path, in_memory_mb: float):
    from pipelines.stages.pretrain import PretrainConfig
    from pipelines.train.pretrain_task import PretrainTask
    from pipelines.typed import from_dict

    shards = shards_manifest(write_shards(str(tmp_path / "shards"),
                                          rows_per_group={"text": 40, "image": 12, "image_text": 24}))
    cfg = from_dict(PretrainConfig, {"recipe": "beit3", "codebook_size": 64, "in_memory_mb": in_memory_mb,
                                     "train": {"micro_batch_size": 6, "num_workers": 2}}, "pretrain")
    task = PretrainTask(cfg, shards)
    task.check()
    return task


def test_group_size_estimate_follows_column_bytes(tmp_path):
    task = task_for(tmp_path, 512)
    # an image row holds 3 x R x R pixel bytes (uncompressed): the estimate must be at least that
    assert task.row_bytes["image"] >= 3 * RESOLUTION * RESOLUTION
    assert 0 < task.row_bytes["text"] < task.row_bytes["image"]
    # against an independent measure: the in-memory Arrow bytes of the group's rows and columns, read whole
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipelines.train.pretrain_task import _COLUMNS
    from tasks import GROUPS, group_of

    table = pq.read_table([task.shards.path(e["path"]) for e in task.shards.files if e["path"].startswith("train/")])
    groups = [group_of(m) for m in table.column("modalities").to_pylist()]
    for g in ("image", "image_text"):  # media: what decides the budget
        rows = table.filter(pc.equal(pa.array(groups), g))
        columns = [c for m in GROUPS[g] for c in _COLUMNS[m] if c in rows.column_names]
        actual = rows.select(columns).nbytes
        assert 0.8 * actual <= task.group_bytes(g) <= 1.25 * actual, (g, task.group_bytes(g), actual)
    # text: the token values themselves (Arrow's per-row offsets are most of a short row's nbytes)
    ids = table.filter(pc.equal(pa.array(groups), "text")).column("text_ids").combine_chunks().flatten()
    assert 0.5 * ids.nbytes <= task.group_bytes("text") <= 2 * ids.nbytes, (task.group_bytes("text"), ids.nbytes)


@pytest.mark.usefixtures("local_ray")
def test_only_groups_under_the_budget_are_materialized(tmp_path):
    from ray.data.dataset import MaterializedDataset

    # a budget between the image-only group and the larger pair group: the pairs are streamed, the
    # image-only group (and the text-only one, a few bytes a row) are held
    task = task_for(tmp_path, 0)
    task.cfg.in_memory_mb = (task.group_bytes("image") + task.group_bytes("image_text")) / 2 / 2**20
    ds = task.datasets()
    assert sorted(task.in_memory) == ["image", "text"]
    assert isinstance(ds["train-image"], MaterializedDataset)
    assert not isinstance(ds["train-image_text"], MaterializedDataset)
    # held or streamed, a group has all its rows
    assert ds["train-image"].count() == task.counts["train"]["image"]
    assert ds["train-image_text"].count() == task.counts["train"]["image_text"]
