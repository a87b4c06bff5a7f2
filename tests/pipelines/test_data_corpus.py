"""The `corpus` stage on fixtures generated here: every source format, every reject
reason with the accounting invariant, and byte-identical reruns."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from PIL import Image

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import pipelines.stages  # noqa: E402,F401 - registers the kinds
from pipelines.data import schema  # noqa: E402
from pipelines.stages.corpus import CorpusConfig, ImageLimits, SourceConfig, TextLimits  # noqa: E402
from pipelines.execute import execute_stage  # noqa: E402
from pipelines.storage import Storage  # noqa: E402
from pipelines.manifest import file_contents  # noqa: E402


pytestmark = pytest.mark.usefixtures("local_ray_module")  # the suite's shared Ray


def png(size=(24, 16), colour=(10, 200, 30), mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, format="PNG")
    return out.getvalue()


def wav(seconds=0.3, rate=8000, freq=300.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    out = io.BytesIO()
    sf.write(out, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format="WAV",
             subtype="PCM_16")
    return out.getvalue()


def write_tar(path, members: list[tuple[str, bytes]]):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def run_corpus(tmp_path, cfg, key="k"):
    storage = Storage(str(tmp_path / "store"))
    data = execute_stage(pipeline="t", stage="corpus", kind="corpus", key=key, config=cfg,
                         config_dict={}, inputs={}, storage=storage)
    return data, storage.output_dir("t", "corpus", key)


def read_split(out_dir, prefix):
    files = sorted(os.listdir(os.path.join(out_dir, prefix))) if os.path.isdir(
        os.path.join(out_dir, prefix)) else []
    if not files:
        return []
    return pa.concat_tables([pq.read_table(os.path.join(out_dir, prefix, f)) for f in files]).to_pylist()


# -- every source format --------------------------------------------------------------------------

def good_sources(root) -> list[SourceConfig]:
    os.makedirs(root / "wds")
    write_tar(root / "wds" / "00000.tar", [
        ("s1.png", png(colour=(255, 0, 0))), ("s1.txt", b"a red box"),
        ("s2.jpg", _jpeg()), ("s2.json", json.dumps({"caption": "a jpeg", "label": 3}).encode()),
        ("s3.wav", wav()), ("s3.txt", b"a tone"), ("s3.cls", b"7"),
    ])
    os.makedirs(root / "idx" / "media")
    (root / "idx" / "media" / "a.png").write_bytes(png(colour=(0, 0, 255)))
    (root / "idx" / "media" / "b.wav").write_bytes(wav(freq=500))
    (root / "idx" / "train.jsonl").write_text(
        json.dumps({"id": "x1", "image": "media/a.png", "text": "blue", "label": 1}) + "\n"
        + json.dumps({"id": "x2", "audio": "media/b.wav", "text": "a higher tone"}) + "\n")
    (root / "idx" / "pairs.csv").write_text("image,caption\nmedia/a.png,a blue square from csv\n")
    os.makedirs(root / "pq")
    pq.write_table(pa.table({
        "img": pa.array([{"bytes": png(colour=(1, 2, 3)), "path": "q.png"}, None],
                        pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "txt": ["hf struct row", "text only row"]}), root / "pq" / "hf.parquet")
    pq.write_table(pa.table({"image": [png(colour=(5, 5, 5))], "text": ["binary column row"]}),
                   root / "pq" / "raw.parquet")
    os.makedirs(root / "tree" / "sub")
    (root / "tree" / "a.txt").write_text("First paragraph.\n\nSecond paragraph\nstill second.\n")
    (root / "tree" / "sub" / "b.rst").write_text("Title\n=====\n\nBody text.\n")
    return [
        SourceConfig(name="wds", format="webdataset", path=str(root / "wds"), text_field="caption"),
        SourceConfig(name="jsonl", format="jsonl", path=str(root / "idx"), id_field="id"),
        SourceConfig(name="csv", format="csv", path=str(root / "idx"), text_field="caption"),
        SourceConfig(name="pq", format="parquet", path=str(root / "pq" / "hf.parquet"), image_field="img",
                     text_field="txt"),
        SourceConfig(name="pqraw", format="parquet", path=str(root / "pq" / "raw.parquet")),
        SourceConfig(name="tree", format="text", path=str(root / "tree"), text_unit="paragraph"),
    ]


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (20, 20), (90, 90, 90)).save(out, format="JPEG")
    return out.getvalue()


def test_every_source_format(tmp_path):
    cfg = CorpusConfig(sources=good_sources(tmp_path), val_fraction=0.0, rows_per_file=4)
    data, out = run_corpus(tmp_path, cfg)
    assert data["schema_version"] == schema.CORPUS_SCHEMA_VERSION
    rows = {r["sample_id"]: r for r in read_split(out, "train")}
    assert read_split(out, "rejects") == []
    assert rows["wds/00000.tar/s1"]["text"] == "a red box"
    assert rows["wds/00000.tar/s1"]["modalities"] == ["text", "image"]
    assert rows["wds/00000.tar/s2"]["text"] == "a jpeg" and rows["wds/00000.tar/s2"]["label"] == 3
    assert rows["wds/00000.tar/s2"]["image"] == _jpeg()  # RGB JPEG kept byte for byte
    s3 = rows["wds/00000.tar/s3"]
    assert s3["modalities"] == ["text", "audio"] and s3["label"] == 7
    assert sf.info(io.BytesIO(s3["audio"])).samplerate == 16000
    assert rows["jsonl/train.jsonl:x1"]["label"] == 1
    assert rows["jsonl/train.jsonl:x2"]["modalities"] == ["text", "audio"]
    assert rows["csv/pairs.csv:1"]["text"] == "a blue square from csv"
    assert rows["pq/hf.parquet:0"]["modalities"] == ["text", "image"]
    assert rows["pq/hf.parquet:1"]["modalities"] == ["text"]
    assert rows["pqraw/raw.parquet:0"]["text"] == "binary column row"
    assert rows["tree/a.txt#2"]["text"] == "Second paragraph\nstill second."
    assert rows["tree/sub/b.rst#1"]["text"] == "Title\n====="
    assert len(rows) == 13 == data["extra"]["counts"]["accepted"]
    # fixed rows per file, deterministic names, row counts in the manifest
    train = [f for f in data["files"] if f["path"].startswith("train/")]
    assert [f["path"] for f in train] == [f"train/part-0000{i}.parquet" for i in range(4)]
    assert [f["rows"] for f in train] == [4, 4, 4, 1]


# -- every reject reason ----------------------------------------------------------------------------

def bad_sources(root) -> list[SourceConfig]:
    os.makedirs(root / "wds")
    write_tar(root / "wds" / "00000.tar", [
        ("ok.png", png()), ("ok.txt", b"a fine pair"),
        ("../evil.txt", b"escape"),                                # unsafe_path
        ("a.txt", b"first half"), ("b.txt", b"other"), ("a.png", png()),  # split_sample (a), b: missing
        ("c.txt", b"caption without its image"),                 # missing_member (require image)
        ("d.mp3", b"ID3"), ("d.txt", b"mp3 audio"),              # unsupported_format
    ])
    (root / "wds" / "00001.tar").write_bytes(b"this is not a tar file" * 50)  # read_error
    os.makedirs(root / "idx" / "m")
    good = png(size=(40, 40))
    (root / "idx" / "m" / "trunc.png").write_bytes(good[: len(good) // 2])
    (root / "idx" / "m" / "bomb.png").write_bytes(png(size=(300, 300)))
    noise = np.random.default_rng(0).integers(0, 255, (90, 90, 3), dtype=np.uint8)
    big = io.BytesIO()
    Image.fromarray(noise).save(big, format="PNG")
    (root / "idx" / "m" / "big.png").write_bytes(big.getvalue())
    (root / "idx" / "m" / "tiny.png").write_bytes(png(size=(4, 4)))
    (root / "idx" / "m" / "junk.wav").write_bytes(b"RIFF\x00\x00junkjunk")
    empty = io.BytesIO()
    sf.write(empty, np.zeros((0,), np.float32), 8000, format="WAV", subtype="PCM_16")
    (root / "idx" / "m" / "empty.wav").write_bytes(empty.getvalue())
    (root / "idx" / "m" / "short.wav").write_bytes(wav(seconds=0.01))
    (root / "idx" / "m" / "ok.png").write_bytes(png(colour=(1, 1, 1)))
    rows = [
        {"image": "m/trunc.png", "text": "corrupt"},        # corrupt_image
        {"image": "m/bomb.png"},                             # decompression_bomb
        {"image": "m/big.png"},                              # too_large
        {"image": "m/tiny.png"},                             # too_small
        {"audio": "m/junk.wav"},                             # undecodable_audio
        {"audio": "m/empty.wav"},                            # empty_audio
        {"audio": "m/short.wav"},                            # too_short
        {"text": "   "},                                     # empty_text
        {"text": "x" * 600},                                 # too_long
        {"image": "../outside.png"},                         # unsafe_path
        {"image": "m/missing.png"},                          # missing_member
        {},                                                  # empty_sample
        {"image": "m/ok.png", "text": "kept"},
        {"image": "m/ok.png", "text": "kept"},               # duplicate
    ]
    (root / "idx" / "bad.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{oops\n")
    os.makedirs(root / "tree")
    (root / "tree" / "latin1.txt").write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))  # non_utf8_text
    (root / "tree" / "ok.txt").write_text("plain good text")
    return [
        SourceConfig(name="wds", format="webdataset", path=str(root / "wds"),
                     require=["image", "text"]),
        SourceConfig(name="idx", format="jsonl", path=str(root / "idx")),
        SourceConfig(name="tree", format="text", path=str(root / "tree")),
    ]


EXPECTED_REASONS = {
    "unsafe_path": 2, "split_sample": 1, "missing_member": 3, "unsupported_format": 1,
    "read_error": 2, "corrupt_image": 1, "decompression_bomb": 1, "too_large": 1, "too_small": 1,
    "undecodable_audio": 1, "empty_audio": 1, "too_short": 1, "empty_text": 1, "too_long": 1,
    "empty_sample": 1, "non_utf8_text": 1,
}


def bad_config(root) -> CorpusConfig:
    return CorpusConfig(sources=bad_sources(root), val_fraction=0.3, rows_per_file=2,
                        text=TextLimits(max_chars=500),
                        image=ImageLimits(min_side=8, max_pixels=50_000, max_bytes=20_000))


def test_every_reject_reason_is_quarantined_and_accounted(tmp_path):
    assert set(EXPECTED_REASONS) == set(schema.REJECT_REASONS)
    data, out = run_corpus(tmp_path, bad_config(tmp_path))
    rejects = read_split(out, "rejects")
    got: dict[str, int] = {}
    for r in rejects:
        got[r["reason"]] = got.get(r["reason"], 0) + 1
        assert r["source"] and r["key"] and r["detail"], r
    assert got == EXPECTED_REASONS
    counts = data["extra"]["counts"]
    accepted = read_split(out, "train") + read_split(out, "val")
    assert counts == {"read": len(rejects) + len(accepted) + 1, "accepted": len(accepted),
                      "rejected": len(rejects), "duplicates": 1}
    assert counts["read"] == counts["accepted"] + counts["rejected"] + counts["duplicates"]
    assert sorted(r["sample_id"] for r in accepted) == [
        "idx/bad.jsonl:13", "tree/ok.txt", "wds/00000.tar/ok"]
    assert read_split(out, "duplicates") == [{"sample_id": "idx/bad.jsonl:14",
                                              "duplicate_of": "idx/bad.jsonl:13"}]
    assert data["metrics"]["rejected.split_sample"] == 1.0
    assert data["extra"]["rejected_by_reason"] == dict(sorted(EXPECTED_REASONS.items()))


def test_two_runs_give_identical_files(tmp_path):
    sources = good_sources(tmp_path)
    cfg = CorpusConfig(sources=sources, val_fraction=0.4, rows_per_file=3)
    first, _ = run_corpus(tmp_path, cfg, key="a")
    second, _ = run_corpus(tmp_path, cfg, key="b")
    assert file_contents(first["files"]) == file_contents(second["files"])
    assert first["extra"] == second["extra"]
    assert first["extra"]["rows_per_split"]["val"] > 0  # the split really splits


def test_limit_bounds_what_is_read(tmp_path):
    root = tmp_path / "tree"
    os.makedirs(root)
    for i in range(6):
        (root / f"{i}.txt").write_text("\n".join(f"line {i}-{j}" for j in range(5)))
    cfg = CorpusConfig(sources=[SourceConfig(name="t", format="text", path=str(root),
                                             text_unit="line", limit=7, files_per_unit=2)])
    data, out = run_corpus(tmp_path, cfg)
    assert data["extra"]["counts"]["read"] == 7
    ids = sorted(r["sample_id"] for r in read_split(out, "train") + read_split(out, "val"))
    assert ids == sorted([f"t/0.txt#{j}" for j in range(1, 6)] + ["t/1.txt#1", "t/1.txt#2"])
