"""The corpus stage's parallel passes against the one-process loop it replaced.

A generated corpus with duplicates planted across tars, across sources and across formats, a reject
and a source limit that ends inside a tar: the stage's files are byte-identical to what the loop
writes (the loop is written out here, as the stage ran it before), with one worker and the one-task
dedup, with three workers and a real hash-partitioned shuffle, and on a `file://` storage URI. A task
killed while writing its staged rows is retried and leaves no trace in the committed output.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import signal
import tarfile
import threading
import time
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import pipelines.stages  # noqa: E402,F401 - registers the kinds
from pipelines.data import corpus_dedup, schema, sources  # noqa: E402
from pipelines.data.corpus_synthetic import write_webdataset_corpus  # noqa: E402
from pipelines.data.ingest import split_of  # noqa: E402
from pipelines.data.normalize import normalize_record  # noqa: E402
from pipelines.data.writer import PartWriter  # noqa: E402
from pipelines.execute import execute_stage  # noqa: E402
from pipelines.stages.corpus import CorpusConfig, SourceConfig  # noqa: E402
from pipelines.storage import Storage  # noqa: E402

pytestmark = pytest.mark.usefixtures("local_ray_module")  # the suite's shared Ray


def one_process_loop(cfg: CorpusConfig, out_dir: str) -> Counter:
    """The corpus stage as it ran before its passes: every record through one process, in plan order."""
    dup_schema = pa.schema([("sample_id", pa.string()), ("duplicate_of", pa.string())])
    writers = {s: PartWriter(out_dir, s, schema.corpus_schema(), cfg.rows_per_file) for s in schema.SPLITS}
    rejects = PartWriter(out_dir, "rejects", schema.rejects_schema(), cfg.rows_per_file)
    dups = PartWriter(out_dir, "duplicates", dup_schema, cfg.rows_per_file)
    count, per_source, seen = Counter(), Counter(), {}
    for src in cfg.sources:
        for unit in sources.plan(src):
            for rec in sources.read(src, unit):
                row = normalize_record(rec, cfg, tuple(src.require))
                if src.limit and per_source[src.name] >= src.limit:
                    continue
                per_source[src.name] += 1
                count["read"] += 1
                if row["reason"]:
                    count["rejected"] += 1
                    rejects.add_rows([row])
                    continue
                if row["content_hash"] in seen:
                    count["duplicates"] += 1
                    dups.add_rows([{"sample_id": row["sample_id"], "duplicate_of": seen[row["content_hash"]]}])
                    continue
                seen[row["content_hash"]] = row["sample_id"]
                count["accepted"] += 1
                row["split"] = split_of(row["sample_id"], cfg.val_fraction)
                writers[row["split"]].add_rows([row])
    for w in (*writers.values(), rejects, dups):
        w.close()
    return count


def files_of(root: str) -> dict[str, bytes]:
    out = {}
    for path in sorted(glob.glob(os.path.join(root, "*", "*"))):
        with open(path, "rb") as f:
            out[os.path.relpath(path, root)] = f.read()
    return out


def run_stage(storage: Storage, cfg: CorpusConfig, key: str) -> dict:
    return execute_stage(pipeline="t", stage="corpus", kind="corpus", key=key, config=cfg,
                         config_dict={}, inputs={}, storage=storage)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Three sources: webdataset a (4 tars, duplicates between its tars), webdataset b (its indices
    overlap a's: every overlapping sample repeats a's content; limit 20 ends inside its third tar),
    a jsonl index c repeating two of a's pictures with their captions, one new pair and one reject."""
    root = tmp_path_factory.mktemp("planted")
    within_a = write_webdataset_corpus(str(root / "a"), 40, per_tar=10, dup_fraction=0.25, side=16, seed=3)
    write_webdataset_corpus(str(root / "b"), 30, first=32, per_tar=8, dup_fraction=0.25, side=16, seed=3)
    os.makedirs(root / "c" / "m")
    with tarfile.open(root / "a" / "00001.tar") as tar:  # two of a's originals, copied into c
        originals = [n for n in tar.getnames() if n.endswith(".png")
                     and f"00001.tar/{n[:-4]}" not in within_a][:2]
        rows = []
        for n in originals:
            (root / "c" / "m" / n).write_bytes(tar.extractfile(n).read())
            rows.append({"image": f"m/{n}", "text": tar.extractfile(n[:-4] + ".txt").read().decode()})
    (root / "c" / "m" / "new.png").write_bytes((root / "c" / "m" / originals[0]).read_bytes()[:40])  # truncated
    rows += [{"image": "m/new.png", "text": "a broken picture"}, {"text": "synthetic picture 1"}]
    (root / "c" / "idx.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = CorpusConfig(sources=[
        SourceConfig(name="a", format="webdataset", path=str(root / "a")),
        SourceConfig(name="b", format="webdataset", path=str(root / "b"), limit=20),
        SourceConfig(name="c", format="jsonl", path=str(root / "c")),
    ], val_fraction=0.2, rows_per_file=7, plot_samples=4)
    reference = root / "reference"
    count = one_process_loop(cfg, str(reference))
    return {"cfg": cfg, "within_a": within_a, "count": count, "files": files_of(str(reference))}


def test_duplicates_across_tasks_and_sources_match_the_one_process_loop(planted, tmp_path, monkeypatch):
    cfg, count, expected = planted["cfg"], planted["count"], planted["files"]
    # the fixture really plants what it says: duplicates inside a, from b onto a, across formats, a limit
    assert count["duplicates"] > len(planted["within_a"]) + 5 and count["rejected"] == 1
    assert count["read"] == 40 + 20 + 4
    assert any(p.startswith("val/") for p in expected) and any(p.startswith("duplicates/") for p in expected)

    storage = Storage(str(tmp_path / "store"))
    one = run_stage(storage, dataclasses.replace(cfg, num_workers=1), "one")
    out = storage.output_dir("t", "corpus", "one")
    assert files_of(out) == expected  # same files, byte for byte
    assert one["extra"]["counts"] == {k: count[k] for k in ("read", "accepted", "rejected", "duplicates")}
    assert one["extra"]["read_by_source"] == {"a": 40, "b": 20, "c": 4}
    assert one["metrics"]["duplicates"] == count["duplicates"]
    dup_rows = pa.concat_tables([pq.read_table(os.path.join(out, p)) for p in sorted(expected)
                                 if p.startswith("duplicates/")]).to_pylist()
    found = {r["sample_id"]: r["duplicate_of"] for r in dup_rows}
    assert {f"a/{k}": f"a/{v}" for k, v in planted["within_a"].items()}.items() <= found.items()

    # three workers, and few enough records per partition that the dedup is a real shuffle
    monkeypatch.setattr(corpus_dedup, "RECORDS_PER_PARTITION", 9)
    assert corpus_dedup.partitions_for(count["read"], 3) > 3
    three = run_stage(storage, dataclasses.replace(cfg, num_workers=3), "three")
    assert files_of(storage.output_dir("t", "corpus", "three")) == expected
    assert three["extra"] == one["extra"]

    # storage given as a URI: the staged files go through pyarrow.fs
    uri = Storage("file://" + str(tmp_path / "uri"))
    run_stage(uri, dataclasses.replace(cfg, num_workers=2), "uri")
    assert files_of(str(tmp_path / "uri" / "t" / "corpus" / "uri")) == expected
    # nothing staged is left behind
    for root in (tmp_path / "store", tmp_path / "uri"):
        assert not glob.glob(str(root / "t" / "corpus" / "_tmp" / "*staging*")), os.listdir(root / "t" / "corpus")


def test_task_killed_mid_write_leaves_nothing(tmp_path):
    write_webdataset_corpus(str(tmp_path / "w"), 900, per_tar=800, side=32, seed=5)
    cfg = CorpusConfig(sources=[SourceConfig(name="w", format="webdataset", path=str(tmp_path / "w"))],
                       rows_per_file=256, num_workers=2)
    storage = Storage(str(tmp_path / "store"))
    clean = run_stage(storage, cfg, "clean")

    # kill the worker writing the big tar's staged rows, while its temporary file is open
    tmp_pattern = str(tmp_path / "store" / "t" / "corpus" / "_tmp" / "*staging*" / "*" / "*.tmp-*")
    result, errors, killed = {}, [], []

    def run():
        try:
            result.update(run_stage(storage, cfg, "killed"))
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 300
    while thread.is_alive() and not killed and time.time() < deadline:
        for path in glob.glob(tmp_pattern):
            pid = int(path.rsplit(".tmp-", 1)[1])
            os.kill(pid, signal.SIGKILL)
            killed.append((pid, path))
            break
        time.sleep(0.005)
    thread.join(timeout=600)
    assert not errors, errors
    assert killed, "no staged file was being written while the test watched"
    pid, path = killed[0]
    with pytest.raises(ProcessLookupError):
        for _ in range(100):  # SIGKILL is asynchronous: gone within moments
            os.kill(pid, 0)
            time.sleep(0.05)
    out = storage.output_dir("t", "corpus", "killed")
    assert files_of(out) == files_of(storage.output_dir("t", "corpus", "clean"))
    assert result["extra"] == clean["extra"]
    assert not [p for p in glob.glob(os.path.join(out, "**"), recursive=True) if ".tmp-" in p]
    assert not glob.glob(str(tmp_path / "store" / "t" / "corpus" / "_tmp" / "*staging*"))
