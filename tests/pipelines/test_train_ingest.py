"""Training ingest: small sample groups are read once into the object store, large ones are streamed,
and the estimate behind that choice follows the shards' real column sizes."""

from __future__ import annotations

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
    # a pair costs its image and its text; twice the rows, twice the bytes
    assert task.group_bytes("image_text") == pytest.approx(
        task.counts["train"]["image_text"] * (task.row_bytes["image"] + task.row_bytes["text"]))
    assert task.group_bytes("image") == pytest.approx(task.counts["train"]["image"] * task.row_bytes["image"])


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
