"""webdataset tars in and out.

In: the corpus reader reads member bytes through webdataset's tar iteration and still rejects what
omniway always rejected (split samples, unsafe paths, unsupported media, bad .cls / .json, an
unreadable tar), without dropping a member webdataset hides.
Out: `omniway export --format webdataset` of a corpus and a shards stage, read back with webdataset's
own `WebDataset`, gives every row of the stage's Parquet parts with the same bytes, text and label;
other stage kinds are refused.
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import yaml
from PIL import Image

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

from pipelines import cli  # noqa: E402
from pipelines.data.sources import webdataset as wds_source  # noqa: E402
from pipelines.export import resolve_stage  # noqa: E402
from pipelines.manifest import Manifest  # noqa: E402
from pipelines.stages.corpus import SourceConfig  # noqa: E402
from pipelines.storage import Storage  # noqa: E402


def png(size=(24, 16), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


def jpeg(seed=0) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (20, 20), (90, 10 * seed % 255, 30)).save(out, format="JPEG")
    return out.getvalue()


def wav(seconds=0.3, freq=300.0) -> bytes:
    t = np.arange(int(seconds * 8000)) / 8000
    out = io.BytesIO()
    sf.write(out, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 8000, format="WAV", subtype="PCM_16")
    return out.getvalue()


def write_tar(path, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


# -- (a) the reader ---------------------------------------------------------------------------------------
def read_tar(path, **kw) -> list[dict]:
    src = SourceConfig(name="w", format="webdataset", path=str(path), text_field="caption", **kw)
    return [rec for unit in wds_source.plan(src) for rec in wds_source.read(src, unit)]


def test_reader_keeps_every_check_on_top_of_webdataset(tmp_path):
    image, sound = png(seed=1), wav()
    path = write_tar(tmp_path / "00007.tar", [
        ("ok.png", image), ("ok.txt", b"a fine pair"), ("ok.cls", b" 5\n"),
        ("a.txt", b"first half"), ("b.txt", b"between"), ("a.png", image),       # a: split_sample
        ("../evil.txt", b"escape"),                                              # unsafe_path
        ("g.txt", b"a gif"), ("g.gif", b"GIF89a"),                               # unsupported_format
        ("c.txt", b"seven"), ("c.cls", b"seven"),                                # read_error (.cls)
        ("j.wav", sound), ("j.json", b"{oops"),                                  # read_error (.json)
        # webdataset's tar_file_iterator never yields a top-level `__*__` name: omniway still groups
        # it, so m (around it) stays a split sample and `__meta__` still makes its own record
        ("m.txt", b"m text"), ("__meta__", b"x"), ("m.png", image),
        ("n.jpg", jpeg()), ("n.json", json.dumps({"caption": "from json", "label": 4}).encode()),
        ("d/s.seg.PNG", image), ("noext", b"n"),                                 # key with dots in the extension
    ])
    recs = read_tar(path)
    got = [(r["key"], r["reason"]) for r in recs]
    assert got == [
        ("00007.tar/ok", ""), ("00007.tar/a", "split_sample"), ("00007.tar/b", ""),
        ("00007.tar/../evil", "unsafe_path"), ("00007.tar/g", "unsupported_format"),
        ("00007.tar/c", "read_error"), ("00007.tar/j", "read_error"), ("00007.tar/m", "split_sample"),
        ("00007.tar/__meta__", ""), ("00007.tar/n", ""), ("00007.tar/d/s", ""), ("00007.tar/noext", ""),
    ]
    by_key = {r["key"]: r for r in recs}
    ok = by_key["00007.tar/ok"]
    assert (ok["image"], ok["image_ext"], ok["text"], ok["label"]) == (image, "png", b"a fine pair", 5)
    assert by_key["00007.tar/b"]["text"] == b"between"
    assert by_key["00007.tar/c"]["detail"] == "bad .cls b'seven'"
    assert by_key["00007.tar/j"]["detail"].startswith("bad json: ")
    assert by_key["00007.tar/g"]["detail"] == "member g.gif"
    assert by_key["00007.tar/../evil"]["detail"] == "../evil.txt"
    n = by_key["00007.tar/n"]
    assert (n["image"], n["image_ext"], n["text"], n["label"]) == (jpeg(), "jpg", b"from json", 4)
    assert (by_key["00007.tar/d/s"]["image"], by_key["00007.tar/d/s"]["image_ext"]) == (image, "png")
    # no fields at all: the normaliser turns these into empty_sample rejects, as before
    assert all(by_key[k]["image"] is None and by_key[k]["text"] is None
               for k in ("00007.tar/__meta__", "00007.tar/noext"))


def test_reader_unreadable_tar_is_one_read_error(tmp_path):
    good = write_tar(tmp_path / "good.tar", [("x.txt", b"x" * 2000), ("y.txt", b"y")])
    data = open(good, "rb").read()
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file" * 50)
    (tmp_path / "cut.tar").write_bytes(data[:1200])  # inside x.txt's data: its header is there, its bytes not
    for name in ("junk.tar", "cut.tar"):
        recs = read_tar(tmp_path / name)
        assert [(r["key"], r["reason"]) for r in recs] == [(name, "read_error")], recs
        assert recs[0]["detail"].startswith("ReadError: ")
        assert str(tmp_path) not in recs[0]["detail"]  # no machine-specific path in the corpus output
    assert [r["text"] for r in read_tar(good)] == [b"x" * 2000, b"y"]


def test_reader_corrupt_gzip_tar_is_one_read_error(tmp_path):
    import gzip

    good = write_tar(tmp_path / "good.tar", [("x.txt", b"x" * 20000), ("y.txt", b"y")])
    packed = bytearray(gzip.compress(open(good, "rb").read()))
    packed[len(packed) // 2] ^= 0xFF  # a flipped byte inside the deflate stream
    (tmp_path / "bad.tar.gz").write_bytes(bytes(packed))
    recs = read_tar(tmp_path / "bad.tar.gz", extensions=[".tar.gz"])
    assert [(r["key"], r["reason"]) for r in recs if r["reason"]] == [("bad.tar.gz", "read_error")], recs


# -- (b) export round trip -----------------------------------------------------------------------------------
WORDS = "the quick brown fox jumps over a lazy dog while seven red birds sing softly".split()


def pipeline(root) -> dict:
    """corpus (one webdataset source, two tars) -> text-tokenizer -> shards, all tiny."""
    rng = np.random.default_rng(0)
    os.makedirs(root / "wds")
    for t, count in ((0, 14), (1, 6)):
        members = []
        for i in range(count):
            k = f"{t}{i:03d}"
            if i % 3 != 2:  # JPEGs are kept as is by the corpus, PNGs re-encoded
                members.append((f"{k}.jpg", jpeg(i)) if i % 2 else (f"{k}.png", png((20 + i, 18), seed=i)))
            if i % 3 != 0:
                members.append((f"{k}.wav", wav(0.2 + 0.02 * i, 200 + 20 * i)))
            if i % 4 == 0:
                members.append((f"{k}.cls", str(i % 5).encode()))
            members.append((f"{k}.txt", " ".join(rng.choice(WORDS, 4)).encode()))
        write_tar(root / "wds" / f"{t:05d}.tar", members)
    return {"name": "wds", "storage": str(root / "store"), "ray": {"num_cpus": 2}, "stages": {
        "corpus": {"uses": "corpus", "with": {
            "sources": [{"name": "w", "format": "webdataset", "path": str(root / "wds")}],
            "val_fraction": 0.3, "rows_per_file": 4}},
        "text-tokenizer": {"uses": "text-tokenizer", "needs": ["corpus"], "with": {"vocab_size": 60, "seed": 1}},
        "shards": {"uses": "shards", "needs": ["corpus", "text-tokenizer"], "with": {
            "rows_per_file": 3, "image_resolution": 16, "max_text_tokens": 64, "batch_size": 3}},
    }}


@pytest.fixture(scope="module")
def built(tmp_path_factory, local_ray_module):
    root = tmp_path_factory.mktemp("wds")
    path = root / "p.yaml"
    path.write_text(yaml.safe_dump(pipeline(root), sort_keys=False))
    workdir = str(root / ".omniway")
    assert cli.main(["run", str(path), "--workdir", workdir]) == 0
    return root, str(path), workdir


def manifest_of(built, stage: str) -> Manifest:
    _, path, workdir = built
    root, out = resolve_stage(path, stage, workdir=workdir)
    return Manifest(dir=out, data=Storage(root).read_manifest(out), storage_uri=root)


def export(built, stage: str, out, capsys, *extra: str) -> tuple[int, str, str]:
    _, path, workdir = built
    capsys.readouterr()
    code = cli.main(["export", path, "--stage", stage, "--format", "webdataset", "--out", str(out),
                     "--workdir", workdir, *extra])
    got = capsys.readouterr()
    return code, got.out, got.err


def read_back(out, split: str) -> list[dict]:
    """Every sample of `<out>/<split>/*.tar`, through webdataset's own reader (bytes, undecoded)."""
    import webdataset

    urls = sorted(glob.glob(os.path.join(str(out), split, "*.tar")))
    return list(webdataset.WebDataset(urls, shardshuffle=False, empty_check=False)) if urls else []


def parquet_rows(manifest: Manifest, split: str) -> list[dict]:
    return [r for p in manifest.paths(".parquet", prefix=f"{split}/") for r in pq.read_table(p).to_pylist()]


def check_layout(manifest: Manifest, out, split: str, samples: list[dict]) -> None:
    parts = manifest.paths(".parquet", prefix=f"{split}/")
    tars = sorted(glob.glob(os.path.join(str(out), split, "*.tar")))
    assert [os.path.basename(t) for t in tars] == [f"{i:05d}.tar" for i in range(len(parts))]  # one per part
    keys = [s["__key__"] for s in samples]
    assert all(k.isdigit() for k in keys) and len(set(keys)) == len(keys)  # dot-free, unique


def test_export_corpus_round_trips_through_webdataset(built, tmp_path, capsys):
    corpus = manifest_of(built, "corpus")
    code, out, err = export(built, "corpus", tmp_path / "out", capsys)
    assert code == 0, err
    assert "train: " in out and "samples in" in out
    seen = 0
    for split in ("train", "val"):
        rows = {r["sample_id"]: r for r in parquet_rows(corpus, split)}
        samples = read_back(tmp_path / "out", split)
        check_layout(corpus, tmp_path / "out", split, samples)
        by_id = {json.loads(s["json"])["sample_id"]: s for s in samples}
        assert set(by_id) == set(rows) and len(samples) == len(rows)
        for sid, row in rows.items():
            s, meta = by_id[sid], json.loads(by_id[sid]["json"])
            assert (meta["source"], meta["split"], meta["modalities"]) == ("w", split, row["modalities"])
            image = s.get("jpg", s.get("png"))
            assert image == row["image"], sid
            if row["image"] is not None:  # the extension names the bytes' format
                assert ("jpg" in s) == row["image"].startswith(b"\xff\xd8")
            assert s.get("flac", s.get("wav")) == row["audio"], sid
            assert s["txt"].decode() == row["text"]
            assert (int(s["cls"]) if "cls" in s else None) == row["label"]
        seen += len(rows)
    assert seen == 20
    # the same output exports to the same bytes
    assert export(built, "corpus", tmp_path / "again", capsys)[0] == 0
    first = sorted(glob.glob(str(tmp_path / "out" / "*" / "*.tar")))
    assert [open(p, "rb").read() for p in first] == [
        open(p.replace(str(tmp_path / "out"), str(tmp_path / "again")), "rb").read() for p in first]
    # an earlier export is not mixed into
    code, _, err = export(built, "corpus", tmp_path / "out", capsys)
    assert code == 1 and "not empty" in err


def test_export_shards_round_trips_through_webdataset(built, tmp_path, capsys):
    import sentencepiece as spm

    shards, corpus, tok = (manifest_of(built, s) for s in ("shards", "corpus", "text-tokenizer"))
    with tok.open(tok.extra["tokenizer"]["model"]) as f:
        sp = spm.SentencePieceProcessor(model_proto=f.read())
    texts = {r["sample_id"]: r["text"] for s in ("train", "val") for r in parquet_rows(corpus, s)}
    code, out, err = export(built, "shards", tmp_path / "out", capsys)
    assert code == 0, err
    assert "token ids only" not in out  # the tokenizer was found beside the shards
    for split in ("train", "val"):
        rows = {r["sample_id"]: r for r in parquet_rows(shards, split)}
        samples = read_back(tmp_path / "out", split)
        check_layout(shards, tmp_path / "out", split, samples)
        by_id = {json.loads(s["json"])["sample_id"]: s for s in samples}
        assert set(by_id) == set(rows) and rows
        for sid, row in rows.items():
            s, meta = by_id[sid], json.loads(by_id[sid]["json"])
            assert (meta["split"], meta["modalities"], meta["label"]) == (split, row["modalities"], row["label"])
            assert meta["text_ids"] == row["text_ids"]
            assert len(row["text_ids"]) < 64  # not cut: the decoded text is the corpus caption
            assert s["txt"].decode() == sp.decode(row["text_ids"]) == texts[sid]
            if row["pixels"] is None:
                assert "png" not in s
            else:  # PNG of the stored uint8 3×16×16 pixels, as 16×16 RGB
                hwc = np.asarray(Image.open(io.BytesIO(s["png"])).convert("RGB"))
                assert hwc.transpose(2, 0, 1).tobytes() == row["pixels"]
            if row["fbank"] is None:
                assert "fbank.npy" not in s
            else:
                feats = np.load(io.BytesIO(s["fbank.npy"]))
                assert feats.shape == (row["fbank_frames"], 128) and feats.tobytes() == row["fbank"]
            assert (int(s["cls"]) if "cls" in s else None) == row["label"]
    # the output directory itself: the tokenizer is found from the storage layout around it
    capsys.readouterr()
    assert cli.main(["export", shards.dir, "--format", "webdataset", "--out", str(tmp_path / "bydir")]) == 0
    assert "token ids only" not in capsys.readouterr().out
    assert sorted(s["txt"] for s in read_back(tmp_path / "bydir", "train")) == sorted(
        s["txt"] for s in read_back(tmp_path / "out", "train"))
    # a copy outside its storage: no tokenizer beside it, so ids only, and the note says so
    import shutil

    shutil.copytree(shards.dir, tmp_path / "copy" / "shards")
    assert cli.main(["export", str(tmp_path / "copy" / "shards"), "--format", "webdataset",
                     "--out", str(tmp_path / "ids")]) == 0
    assert "text written as token ids only" in capsys.readouterr().out
    samples = read_back(tmp_path / "ids", "train")
    assert samples and not any("txt" in s for s in samples)
    assert all(json.loads(s["json"])["text_ids"] for s in samples)


def test_export_refuses_what_is_not_corpus_or_shards(built, tmp_path, capsys):
    code, _, err = export(built, "text-tokenizer", tmp_path / "tok", capsys)
    assert code == 1
    assert "kind 'text-tokenizer'" in err and "takes corpus and shards outputs" in err
    assert not (tmp_path / "tok").exists()
    # a committed output of kind `pretrain` (training one here would take minutes): the kind alone
    # decides, before any file of it is read, so empty files with the pretrain names stand in
    root = tmp_path / "store"
    storage = Storage(str(root))
    work = storage.new_work_dir("p", "pretrain", "k")
    for name in ("model.safetensors", "heads.safetensors", "pretrain.json"):
        (open(os.path.join(work, name), "wb")).close()
    from pipelines.manifest import describe_files

    files = describe_files(work)
    storage.commit(work, storage.output_dir("p", "pretrain", "k"), {
        "format": "omniway.manifest/1", "pipeline": "p", "stage": "pretrain", "kind": "pretrain", "key": "k",
        "files": files, "extra": {}, "fingerprint": "f"})
    capsys.readouterr()
    code = cli.main(["export", storage.output_dir("p", "pretrain", "k"), "--format", "webdataset",
                     "--out", str(tmp_path / "pre")])
    err = capsys.readouterr().err
    assert code == 1 and "kind 'pretrain'" in err and "omniway and beit3 take pretrain" in err
    # and the other way round: a corpus output is not a model
    _, path, workdir = built
    code = cli.main(["export", path, "--stage", "corpus", "--out", str(tmp_path / "m"), "--workdir", workdir])
    err = capsys.readouterr().err
    assert code == 1 and "not a model stage output" in err and "webdataset: corpus, shards" in err
