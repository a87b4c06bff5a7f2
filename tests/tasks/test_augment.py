"""Training-image augmentation: reproducible draws, the operations themselves, visual tokens of the augmented
view, validation untouched, and a training stream over real Ray Data that repeats its views on resume."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from omniway_shard_fixtures import numpy_batch, shards_manifest, write_shards
from omniway_visual_tokenizer_fixture import write_visual_tokenizer
from tasks import BatchSpec, Collator, get_recipe
from tasks.augment import augment_image, augment_images, crop_box, sample_seeds
from tasks.recipes import ImageAugment

SPEC = BatchSpec(image_size=32, shard_resolution=32, patch_size=8, max_text_tokens=16, max_audio_frames=64)
ON = ImageAugment(enabled=True)


def unit_images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_same_seed_epoch_rank_sample_give_the_same_pixels_and_others_do_not():
    ids = [f"train/image_text/{i}" for i in range(6)]
    seeds = sample_seeds(0, 3, 1, ids)
    assert seeds == sample_seeds(0, 3, 1, ids) and len(set(seeds)) == 6
    for other in (sample_seeds(1, 3, 1, ids), sample_seeds(0, 4, 1, ids), sample_seeds(0, 3, 0, ids)):
        assert all(a != b for a, b in zip(seeds, other))  # seed, epoch and rank all enter the draw
    x = unit_images()
    a, b = augment_images(x, seeds, ON, 32), augment_images(x, seeds, ON, 32)
    assert torch.equal(a, b)
    c = augment_images(x, sample_seeds(0, 4, 1, ids), ON, 32)
    assert all(not torch.equal(a[i], c[i]) for i in range(6))
    assert a.min() >= 0 and a.max() <= 1 and a.shape == (6, 3, 32, 32)


def test_each_operation_does_what_it_says():
    x = unit_images(1)[0]
    identity = ImageAugment(enabled=True, crop_scale=[1.0, 1.0], crop_ratio=[1.0, 1.0], hflip=0.0, brightness=0,
                            contrast=0, saturation=0)
    assert torch.allclose(augment_image(x, 5, identity, 32), x, atol=1e-6)
    flip = dataclasses.replace(identity, hflip=1.0)
    assert torch.allclose(augment_image(x, 5, flip, 32), x.flip(-1), atol=1e-6)
    dark = dataclasses.replace(identity, brightness=0.5)
    factors = {round(float(augment_image(x, s, dark, 32).sum() / x.sum()), 3) for s in range(8)}
    assert len(factors) > 4 and all(0.5 <= f <= 1.5 for f in factors)  # one brightness factor per draw
    g = torch.Generator().manual_seed(0)
    for _ in range(200):  # RandomResizedCrop: inside the image, area and aspect in range (or the fallback)
        top, left, h, w = crop_box(112, 112, [0.2, 1.0], [3 / 4, 4 / 3], g)
        assert 0 <= top and top + h <= 112 and 0 <= left and left + w <= 112
        assert 0.2 * 112 * 112 * 0.9 <= h * w <= 112 * 112 and 0.7 <= w / h <= 1.4
    gray = torch.full((3, 32, 32), 0.5)
    saturated = dataclasses.replace(identity, saturation=0.4, contrast=0.4)
    assert torch.allclose(augment_image(gray, 1, saturated, 32), gray, atol=1e-6)  # gray stays gray


def test_collate_augments_only_with_seeds_and_drops_the_stored_tokens():
    recipe = get_recipe("opt", augment=ON)
    col = Collator(SPEC, recipe)
    rows = numpy_batch("image_text", 6)
    plain, again = col.collate("image_text", rows), col.collate("image_text", rows)
    assert torch.equal(plain["pixels"], again["pixels"]) and "image_tokens" in plain  # no seeds: the shard pixels
    seeds = sample_seeds(0, 0, 0, rows["sample_id"])
    view = col.collate("image_text", rows, seeds)
    assert "image_tokens" not in view  # they describe the stored image, not this view
    assert not torch.equal(view["pixels"], plain["pixels"])
    assert torch.equal(view["pixels"], col.collate("image_text", rows, seeds)["pixels"])
    assert view["pixels"].min() >= -1 and view["pixels"].max() <= 1


@pytest.fixture
def augmenting_task(tmp_path):
    from pipelines.stages.pretrain import PretrainConfig
    from pipelines.train.pretrain_task import PretrainTask
    from pipelines.typed import from_dict

    shards = shards_manifest(write_shards(str(tmp_path / "shards"), rows_per_group={"image_text": 30, "text": 12}))
    visual = write_visual_tokenizer(str(tmp_path / "vqkd"))
    cfg = from_dict(PretrainConfig, {"recipe": "beit3", "codebook_size": 64,
                                     "recipe_overrides": {"augment": {"enabled": True},
                                                          "mix": {"text": 1, "image_text": 1}},
                                     "train": {"micro_batch_size": 6, "num_workers": 1}}, "pretrain")
    task = PretrainTask(cfg, shards, visual)
    task.check()
    return task


def test_tokens_of_the_augmented_view_are_the_tokenizer_run_on_that_view(augmenting_task, tmp_path):
    from model.visual_tokenizer import VQKD

    task = augmenting_task
    assert task.retokenize and task.mim_target == "tokens"
    rows = numpy_batch("image_text", 6)
    out = task.collate_train("image_text", rows, epoch=2)
    tokenizer = VQKD.load(str(tmp_path / "vqkd" / "tokenizer"))
    want = tokenizer.tokenize(out["pixels"])  # (B, N)
    assert out["image_tokens"].shape == (6, 16) and torch.equal(out["image_tokens"], want)
    stored = torch.from_numpy(np.stack([np.asarray(c, np.int64) for c in rows["image_tokens"]]))
    clean = tokenizer.tokenize(task.collate("image_text", rows)["pixels"])
    assert not torch.equal(out["image_tokens"], clean)  # another view, other codes
    # validation batches (`collate`) are the shard pixels and the shard tokens, never augmented
    val = task.collate("image_text", rows)
    assert torch.equal(val["pixels"], Collator(SPEC, task.recipe()).collate("image_text", rows)["pixels"])
    assert torch.equal(val["image_tokens"], stored)
    assert "image_tokens" not in task.collate_train("text", numpy_batch("text", 3), epoch=2)


def test_pretrain_refuses_augmented_token_targets_without_the_tokenizer(tmp_path):
    from pipelines.stages.pretrain import PretrainConfig
    from pipelines.train.pretrain_task import PretrainTask, ShardsError
    from pipelines.typed import from_dict

    shards = shards_manifest(write_shards(str(tmp_path / "shards"), rows_per_group={"image_text": 30}))
    cfg = from_dict(PretrainConfig, {"recipe": "beit3", "codebook_size": 64, "recipe_overrides": {
        "augment": {"enabled": True}, "mix": {"image_text": 1}}, "train": {"num_workers": 1}}, "pretrain")
    with pytest.raises(ShardsError, match="add the visual-tokenizer stage"):
        PretrainTask(cfg, shards).check()
    pixels = from_dict(PretrainConfig, {"recipe": "beit3", "mim_target": "pixels", "recipe_overrides": {
        "augment": {"enabled": True}, "mix": {"image_text": 1}}, "train": {"num_workers": 1}}, "pretrain")
    task = PretrainTask(pixels, shards)
    task.check()  # pixel targets are computed from the view itself: no tokenizer needed
    assert not task.retokenize


@pytest.mark.usefixtures("local_ray")
def test_a_training_stream_repeats_its_views_when_resumed(augmenting_task):
    """A Stream over a real Ray Data iterator: 8 batches (5 per epoch, so into the second epoch); a stream
    resumed at epoch 0, batch 3 yields batches 3-7 again, pixel for pixel; the second epoch's views of the
    same samples are new ones."""
    from pipelines.train.streams import Stream, stream_collate

    task = augmenting_task
    ds = task.datasets()["train-image_text"]

    def stream(position=None):
        return Stream(ds.iterator(), "image_text", 6, stream_collate(task, "image_text"), position=position)

    straight = stream()
    batches = [next(straight) for _ in range(8)]
    assert straight.position() == {"epoch": 1, "offset": 3}
    resumed = stream({"epoch": 0, "offset": 3})
    for want in batches[3:]:
        got = next(resumed)
        assert torch.equal(got["pixels"], want["pixels"]) and torch.equal(got["image_tokens"], want["image_tokens"])
    # epoch 1 reads the same samples in the same order: same texts, other views
    assert torch.equal(batches[5]["text_ids"], batches[0]["text_ids"])
    assert not torch.equal(batches[5]["pixels"], batches[0]["pixels"])
