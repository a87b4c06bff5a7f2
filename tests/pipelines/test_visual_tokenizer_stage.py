"""The visual-tokenizer stage end to end on tuxpaint stamps: corpus -> visual-tokenizer (trained through
the shared Ray Train + DeepSpeed loop) -> shards with an `image_tokens` column computed in Ray actors."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import pipelines.stages  # noqa: E402,F401
from pipelines.stages.corpus import CorpusConfig, SourceConfig  # noqa: E402
from pipelines.stages.shards import ShardsConfig  # noqa: E402
from pipelines.stages.text_tokenizer import TextTokenizerConfig  # noqa: E402
from pipelines.execute import execute_stage  # noqa: E402
from pipelines.manifest import Manifest  # noqa: E402
from pipelines.storage import Storage  # noqa: E402
from pipelines.train.config import TrainConfig  # noqa: E402
from model.vqkd_config import VQKDConfig as TokenizerArch  # noqa: E402
from pipelines.stages.visual_tokenizer import VisualTokenizerConfig  # noqa: E402

RES, PATCH, CODES = 32, 8, 16


def run(storage, stage, kind, cfg, inputs, key):
    data = execute_stage(pipeline="t", stage=stage, kind=kind, key=key, config=cfg, config_dict={},
                         inputs=inputs, storage=storage)
    return Manifest(dir=storage.output_dir("t", stage, key), data=data, storage_uri=storage.root)


@pytest.fixture(scope="module")
def built(tmp_path_factory, local_ray_module):
    root = tmp_path_factory.mktemp("vt")
    storage = Storage(str(root / "store"))
    corpus = run(storage, "corpus", "corpus", CorpusConfig(
        sources=[SourceConfig(name="tux", format="tuxpaint", path="/usr/share/tuxpaint/stamps", limit=40)],
        val_fraction=0.2, rows_per_file=16), {}, "c")
    cfg = VisualTokenizerConfig(
        tokenizer=TokenizerArch(image_resolution=RES, patch_size=PATCH, dim=32, depth=1, heads=2, ffn_dim=64,
                                decoder_depth=1, codebook_size=CODES, code_dim=8, decay=0.9, restart_every=2),
        train=TrainConfig(steps=4, micro_batch_size=8, num_workers=1, cpus_per_worker=2, zero_stage=0,
                          warmup_steps=1, log_every=2, checkpoint_every=100, max_failures=0),
        plot_samples=2)
    vt = run(storage, "vt", "visual-tokenizer", cfg, {"corpus": corpus}, "v")
    tok = run(storage, "tok", "text-tokenizer", TextTokenizerConfig(vocab_size=120, seed=0),
              {"corpus": corpus}, "t")
    shards = run(storage, "shards", "shards", ShardsConfig(rows_per_file=64, image_resolution=RES, batch_size=8),
                 {"corpus": corpus, "tok": tok, "vt": vt}, "s")
    return vt, shards


def test_stage_writes_weights_metrics_artifact_and_contract(built):
    vt, _ = built
    paths = {f["path"] for f in vt.files}
    assert {"tokenizer/visual_tokenizer.safetensors", "tokenizer/visual_tokenizer.json",
            "plots/visual_tokenizer.png"} <= paths
    assert vt.extra["encoder"] == "pipelines.visual_tokenizer.encoder:load_encoder"
    info = vt.extra["visual_tokenizer"]
    assert (info["grid"], info["num_patches"], info["codebook_size"]) == (RES // PATCH, (RES // PATCH) ** 2, CODES)
    m = vt.metrics
    assert 0 < m["usage"] <= 1 and m["codes_used"] >= 2 and m["perplexity"] >= 1
    assert np.isfinite(m["rec_loss"]) and np.isfinite(m["train_loss"])


def test_shards_image_tokens_equal_direct_tokenization(built):
    from pipelines.data.featurize import load_visual_encoder

    vt, shards = built
    encoder = load_visual_encoder(vt)  # the contract shards uses, loaded again here
    checked = 0
    for path in shards.paths(".parquet"):
        table = pq.read_table(path, columns=["pixels", "image_tokens"]).to_pylist()
        rows = [r for r in table if r["pixels"] is not None]
        if not rows:
            continue
        pixels = np.stack([np.frombuffer(r["pixels"], np.uint8).reshape(3, RES, RES) for r in rows])
        expected = encoder(pixels)
        got = np.array([r["image_tokens"] for r in rows], dtype=np.int16)
        assert got.shape == (len(rows), (RES // PATCH) ** 2)
        np.testing.assert_array_equal(got, expected)
        checked += len(rows)
    assert checked >= 20
