"""corpus -> text-tokenizer -> shards over a small slice of the real Debian demo corpora."""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import pipelines.stages  # noqa: E402,F401
from pipelines.stages.corpus import CorpusConfig, SourceConfig  # noqa: E402
from pipelines.stages.shards import ShardsConfig  # noqa: E402
from pipelines.stages.text_tokenizer import TextTokenizerConfig  # noqa: E402
from pipelines.data.reader import decode_pixels, read_shards  # noqa: E402
from pipelines.execute import execute_stage  # noqa: E402
from pipelines.manifest import Manifest  # noqa: E402
from pipelines.storage import Storage  # noqa: E402


# the suite's shared Ray (tests/conftest.py): a second ray.init failed when other tests ran first
pytestmark = pytest.mark.usefixtures("local_ray")


def run(storage, stage, kind, cfg, inputs):
    data = execute_stage(pipeline="demo", stage=stage, kind=kind, key="k", config=cfg,
                         config_dict={}, inputs=inputs, storage=storage)
    return Manifest(dir=storage.output_dir("demo", stage, "k"), data=data, storage_uri=storage.root)


def test_demo_slice(tmp_path):
    storage = Storage(str(tmp_path))
    corpus = run(storage, "corpus", "corpus", CorpusConfig(sources=[
        # animals/mammals holds badger with its English spoken caption badger_desc.ogg
        SourceConfig(name="tuxpaint", format="tuxpaint",
                     path="/usr/share/tuxpaint/stamps/animals/mammals", limit=40),
        SourceConfig(name="asterisk", format="asterisk",
                     path="/usr/share/asterisk/sounds/en_US_f_Allison/digits", limit=10),
        SourceConfig(name="digits", format="digits", limit=60),
        SourceConfig(name="pydocs", format="text", path="/usr/share/doc/python3.11/html/_sources",
                     extensions=[".rst.txt"], text_unit="paragraph", max_files=3),
    ], rows_per_file=64), {})
    counts = corpus.extra["counts"]
    assert counts["read"] == counts["accepted"] + counts["rejected"] + counts["duplicates"]
    by_source = corpus.extra["read_by_source"]
    assert by_source["tuxpaint"] == 40 and by_source["asterisk"] == 10 and by_source["digits"] == 60
    rows = {r["sample_id"]: r for f in corpus.paths(".parquet", prefix="train/")
            + corpus.paths(".parquet", prefix="val/") for r in pq.read_table(f).to_pylist()}
    badger = rows["tuxpaint/badger"]
    assert badger["text"] == "A badger." and badger["modalities"] == ["text", "image", "audio"]
    one = rows["asterisk/digits/1"]
    assert one["text"].lower().startswith("one") and one["modalities"] == ["text", "audio"]
    wave, rate = sf.read(io.BytesIO(one["audio"]))
    assert rate == 16000 and 0.2 < len(wave) / rate < 3
    assert rows["digits/00000"]["text"] == "a handwritten digit 0" and rows["digits/00000"]["label"] == 0

    tok = run(storage, "text-tokenizer", "text-tokenizer",
              TextTokenizerConfig(vocab_size=500), {"corpus": corpus})
    shards = run(storage, "shards", "shards", ShardsConfig(rows_per_file=64, image_resolution=32),
                 {"corpus": corpus, "text-tokenizer": tok})
    assert shards.extra["rows_per_split"] == corpus.extra["rows_per_split"]
    audio = read_shards(shards, "train", ["audio"]).take_all()
    assert audio and all(r["fbank_frames"] > 10 for r in audio)
    images = read_shards(shards, "train", ["image", "text"], columns=["pixels"]).take_all()
    pix = np.stack([decode_pixels(r["pixels"], 32) for r in images])  # (N, 3, 32, 32)
    assert pix.shape[1:] == (3, 32, 32) and pix.std() > 20
