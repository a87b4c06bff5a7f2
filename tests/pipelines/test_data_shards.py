"""text-tokenizer + shards + reader API on a generated corpus; log-mel against a numpy reference."""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from PIL import Image

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import pipelines.stages  # noqa: E402,F401
from pipelines.data import schema  # noqa: E402
from pipelines.stages.corpus import CorpusConfig, SourceConfig  # noqa: E402
from pipelines.stages.shards import ShardsConfig  # noqa: E402
from pipelines.stages.text_tokenizer import TextTokenizerConfig  # noqa: E402
from pipelines.data.fbank import decode_fbank, log_mel  # noqa: E402
from pipelines.data.reader import UnknownSchemaVersion, decode_pixels, read_shards  # noqa: E402
from pipelines.execute import execute_stage  # noqa: E402
from pipelines.manifest import Manifest  # noqa: E402
from pipelines.storage import Storage  # noqa: E402
from pipelines.manifest import file_contents  # noqa: E402


WORDS = "the quick brown fox jumps over a lazy dog while seven red birds sing softly".split()


def make_corpus_files(root):
    rng = np.random.default_rng(0)
    os.makedirs(root / "wds")
    import tarfile

    with tarfile.open(root / "wds" / "0.tar", "w") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for i in range(24):
            caption = " ".join(rng.choice(WORDS, 6))
            if i % 3 != 2:
                img = Image.fromarray(rng.integers(0, 255, (30 + i, 50, 3), dtype=np.uint8))
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                add(f"{i:03d}.png", buf.getvalue())
            if i % 3 != 0:
                t = np.arange(int(8000 * (0.2 + 0.05 * i))) / 8000
                buf = io.BytesIO()
                sf.write(buf, (0.3 * np.sin(2 * np.pi * (200 + 20 * i) * t)).astype(np.float32),
                         8000, format="WAV", subtype="PCM_16")
                add(f"{i:03d}.wav", buf.getvalue())
            add(f"{i:03d}.txt", caption.encode())


def run(storage, stage, kind, cfg, inputs, key):
    data = execute_stage(pipeline="t", stage=stage, kind=kind, key=key, config=cfg,
                         config_dict={}, inputs=inputs, storage=storage)
    return Manifest(dir=storage.output_dir("t", stage, key), data=data, storage_uri=storage.root)


def shards_cfg() -> ShardsConfig:
    return ShardsConfig(rows_per_file=4, image_resolution=16, max_text_tokens=5, batch_size=3)


@pytest.fixture(scope="module")
def built(tmp_path_factory, local_ray_module):
    root = tmp_path_factory.mktemp("shards")
    make_corpus_files(root)
    storage = Storage(str(root / "store"))
    corpus = run(storage, "corpus", "corpus", CorpusConfig(
        sources=[SourceConfig(name="w", format="webdataset", path=str(root / "wds"))],
        val_fraction=0.25, rows_per_file=5), {}, "c")
    tok_cfg = TextTokenizerConfig(vocab_size=60, seed=1)
    tok = run(storage, "tok", "text-tokenizer", tok_cfg, {"corpus": corpus}, "t1")
    tok2 = run(storage, "tok", "text-tokenizer", tok_cfg, {"corpus": corpus}, "t2")
    cfg = shards_cfg()
    inputs = {"corpus": corpus, "tok": tok}
    shards = run(storage, "shards", "shards", cfg, inputs, "s1")
    shards2 = run(storage, "shards", "shards", cfg, inputs, "s2")
    return corpus, tok, tok2, shards, shards2


def test_tokenizer_is_deterministic_and_has_special_tokens(built):
    _, tok, tok2, _, _ = built
    assert file_contents(tok.files) == file_contents(tok2.files)  # same sha256: byte-identical model
    info = tok.extra["tokenizer"]
    assert info["ids"]["pad"] == 0 and info["ids"]["bos"] == 2 and info["ids"]["eos"] == 3
    assert [info["ids"][t] for t in ("<mask>", "<image>", "<audio>", "<text>")] == [4, 5, 6, 7]
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=tok.path("text.model"))
    assert sp.decode(sp.encode("the lazy dog")) == "the lazy dog"


def test_adopting_a_model_validates_it(built, tmp_path):
    _, tok, _, _, _ = built
    storage = Storage(str(tmp_path / "store"))
    ok = run(storage, "tok", "text-tokenizer",
             TextTokenizerConfig(model_path=tok.path("text.model")), {}, "a")
    assert ok.extra["tokenizer"]["sha256"] == tok.extra["tokenizer"]["sha256"]
    with pytest.raises(ValueError, match="lacks.*<video>"):
        run(storage, "tok", "text-tokenizer", TextTokenizerConfig(
            model_path=tok.path("text.model"), special_tokens=["<mask>", "<video>"]), {}, "b")


def test_shards_columns_and_manifest(built):
    corpus, tok, _, shards, _ = built
    assert shards.schema_version == schema.SHARDS_SCHEMA_VERSION
    assert shards.extra["rows_per_split"] == corpus.extra["rows_per_split"]
    assert shards.extra["tokenizers"]["text"]["sha256"] == tok.extra["tokenizer"]["sha256"]
    train = [f for f in shards.files if f["path"].startswith("train/")]
    assert all(f["rows"] == 4 for f in train[:-1]) and 1 <= train[-1]["rows"] <= 4
    for f in shards.files:  # hashes the tasks computed as they wrote are the files' own
        with shards.open(f["path"]) as fh:
            assert f["sha256"] == hashlib.sha256(fh.read()).hexdigest(), f["path"]
    table = pq.read_table(shards.path(train[0]["path"]))
    assert table.schema.equals(schema.shards_schema())
    corpus_rows = {r["sample_id"]: r for f in corpus.paths(".parquet", prefix="train/")
                   for r in pq.read_table(f).to_pylist()}
    for row in table.to_pylist():
        src = corpus_rows[row["sample_id"]]
        ids = row["text_ids"]
        assert ids[0] == 2 and ids[-1] == 3 and len(ids) <= 5
        if src["image"] is not None:
            pix = decode_pixels(row["pixels"], 16)
            assert pix.shape == (3, 16, 16) and pix.std() > 10  # real content, not blank
        else:
            assert row["pixels"] is None
        if src["audio"] is not None:
            wave, rate = sf.read(io.BytesIO(src["audio"]), dtype="float32")
            assert rate == 16000
            assert row["fbank_frames"] == 1 + (len(wave) - 400) // 160
            feats = decode_fbank(row["fbank"], row["fbank_frames"])
            np.testing.assert_allclose(feats.astype(np.float32), log_mel(wave), atol=0.02, rtol=0.01)
        else:
            assert row["fbank"] is None and row["fbank_frames"] is None


def test_two_shards_runs_are_byte_identical(built):
    _, _, _, a, b = built
    assert file_contents(a.files) == file_contents(b.files)
    assert a.extra == b.extra


def test_whole_and_cut_parts_match_a_plain_loop(built, tmp_path):
    """Parts encoded by their Ray task (whole: written by the task, or sent to the driver) and
    parts cut into chunks and encoded by the driver give the bytes a one-process loop writes
    for the same rows, and the manifest's sha256 is that of the file."""
    import dataclasses

    import pyarrow as pa

    from pipelines.data.featurize import Featurizer
    from pipelines.data.shards_build import write_shards
    from pipelines.data.shards_plan import plan_chunks, plan_parts
    from pipelines.data.writer import PartWriter

    corpus, tok, _, shards, _ = built
    spm_model = open(tok.path("text.model"), "rb").read()
    cfg = ShardsConfig(**{**dataclasses.asdict(shards_cfg()), "plot_samples": 0})
    loop_dir = tmp_path / "loop"
    feat = Featurizer(spm_model, cfg)
    for split in schema.SPLITS:
        rows = [r for f in corpus.paths(".parquet", prefix=f"{split}/")
                for r in pq.read_table(f).to_pylist()]
        writer = PartWriter(str(loop_dir), split, schema.shards_schema(), cfg.rows_per_file)
        writer.add(pa.Table.from_pylist(feat.rows(rows), schema=schema.shards_schema()))
        writer.close()

    def files(root):
        return {f"{s}/{n}": (root / s / n).read_bytes()
                for s in schema.SPLITS for n in sorted(os.listdir(root / s))}

    expected = files(loop_dir)
    parts = [p for split in schema.SPLITS for p in plan_parts(corpus, split, cfg.rows_per_file)]
    # one worker: every part whole; eight: the heavy parts are cut. Whole parts are written by
    # their tasks (on this node) or, as from another node, sent back to the driver.
    for workers, local_writes in ((1, True), (8, True), (1, False)):
        chunks = plan_chunks(parts, cfg.batch_size, workers)
        cut = {(c["split"], c["index"]) for c in chunks if c["chunks"] > 1}
        assert bool(cut) == (workers == 8), cut
        out = tmp_path / f"ray{workers}-{local_writes}"
        # what a worker killed before renaming its temporary file leaves behind
        (out / "train").mkdir(parents=True)
        (out / "train" / "part-00000.parquet.tmp-4242").write_bytes(b"partial")
        done = write_shards(corpus, spm_model, dataclasses.replace(cfg, num_workers=workers),
                            str(out), local_writes=local_writes)
        assert files(out) == expected
        assert [d["rows"] for d in done] == [len(pq.read_table(out / d["path"])) for d in done]
        assert [d["sha256"] for d in done] == [hashlib.sha256(expected[d["path"]]).hexdigest()
                                               for d in done]
        assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # no temporary file left
        by_task = {d["path"] for d in done if d["written_by_task"]}
        whole = {f"{d['split']}/part-{d['index']:05d}.parquet" for d in done
                 if (d["split"], d["index"]) not in cut}
        assert by_task == (whole if local_writes else set()), (by_task, whole)


def test_reader_split_modality_mix_and_schema_check(built):
    _, _, _, shards, _ = built
    all_train = read_shards(shards, "train").take_all()
    assert len(all_train) == shards.extra["rows_per_split"]["train"]
    pairs = read_shards(shards, "train", ["image", "text"]).take_all()
    assert pairs and all({"image", "text"} <= set(r["modalities"]) for r in pairs)
    exact = read_shards(shards, "train", ["text", "audio"], exact=True,
                        columns=["sample_id", "fbank"]).take_all()
    assert exact and set(exact[0]) == {"sample_id", "fbank"}
    assert len(pairs) + len(exact) == len(all_train)  # fixture: every sample is one of the two
    val = read_shards(shards, "val").take_all()
    assert {r["split"] for r in val} == {"val"}
    future = Manifest(dir=shards.dir, data={**shards.data, "schema_version": "omniway.shards/99"})
    with pytest.raises(UnknownSchemaVersion):
        read_shards(future, "train")


def test_log_mel_matches_numpy_reference():
    """Independent reference: numpy framing, np.fft, a filterbank built filter by filter."""
    rng = np.random.default_rng(3)
    t = np.arange(16000) / 16000
    wave = (0.4 * np.sin(2 * np.pi * 1000 * t) + 0.05 * rng.standard_normal(16000)).astype(np.float32)
    n, hop = 400, 160
    frames = 1 + (len(wave) - n) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)  # periodic Hann
    power = np.stack([np.abs(np.fft.rfft(wave[i * hop:i * hop + n] * window)) ** 2
                      for i in range(frames)])                     # (frames, 201)
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    imel = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    edges = [imel(x) for x in np.linspace(0, mel(8000), 130)]
    freqs = np.arange(201) * 16000 / 400
    fb = np.zeros((128, 201))
    for m in range(128):
        lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
        for k, f in enumerate(freqs):
            if lo < f <= c:
                fb[m, k] = (f - lo) / (c - lo)
            elif c < f < hi:
                fb[m, k] = (hi - f) / (hi - c)
    ref = np.log(np.maximum(power @ fb.T, 1e-10))                  # (frames, 128)
    got = log_mel(wave)
    assert got.shape == (98, 128)
    np.testing.assert_allclose(got, ref, atol=1e-3, rtol=1e-4)
    # the 1 kHz tone lights the mel bin whose centre is nearest 1 kHz
    assert abs(np.argmax(got.mean(0)) - np.argmin(np.abs(np.array(edges[1:-1]) - 1000))) <= 1
