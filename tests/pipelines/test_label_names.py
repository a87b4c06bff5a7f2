"""Class names as labels: the readers store a name as its place in the source's table (configured, or the
sorted names of its data), the corpus manifest records that table where a configured one goes, and the
shards and a zero-shot suite of `evaluate` take it from there. End to end through `omniway run` on a
generated JSONL corpus (corpus -> text-tokenizer -> shards -> evaluate of a BEiT-3 checkpoint), and
`omniway report --compare-set` against a rerun with other suite limits."""

from __future__ import annotations

import io
import json
import re
import tarfile

import pytest
from PIL import Image, ImageDraw

from pipelines.data import sources
from pipelines.stages.corpus import CorpusConfig, SourceConfig, with_data_label_names
from pipelines.typed import ConfigError

# first-seen order in the index is not the sorted order: the table must not depend on it
SHAPES = {"triangle": "green", "circle": "red", "square": "blue"}
PER_SHAPE = 10


def shape_png(shape: str, colour: str, shift: int) -> bytes:
    image = Image.new("RGB", (32, 32), "white")
    draw = ImageDraw.Draw(image)
    box = (4 + shift, 4, 26 + shift, 26)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(15 + shift, 4), (26 + shift, 26), (4 + shift, 26)], fill=colour)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def write_index(root, rows: list[dict], name: str = "index.jsonl") -> str:
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def shapes_corpus(root) -> str:
    """PER_SHAPE images per shape, each captioned, labelled with the shape's name."""
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(PER_SHAPE):
        for shape, colour in SHAPES.items():
            rel = f"img/{shape}{i}.png"
            (root / rel).write_bytes(shape_png(shape, colour, i % 5))
            rows.append({"id": f"{shape}{i}", "image": rel, "text": f"a {colour} {shape} number {i}",
                         "label": shape})
    return write_index(root, rows)


# -- the readers and the table, no Ray --------------------------------------------------------------------
def read_all(src: SourceConfig) -> list[dict]:
    return [rec for unit in sources.plan(src) for rec in sources.read(src, unit)]


def test_names_in_the_data_become_a_sorted_table(tmp_path):
    path = write_index(tmp_path, [{"text": "a", "label": "dog"}, {"text": "b", "label": " cat "},
                                  {"text": "c"}, {"text": "d", "label": "bird"}])
    cfg = with_data_label_names(CorpusConfig(sources=[SourceConfig(name="pets", format="jsonl", path=path)]))
    src = cfg.sources[0]
    assert src.label_names == ["bird", "cat", "dog"] and src.label_table() == ["bird", "cat", "dog"]
    assert [r["label"] for r in read_all(src)] == [2, 1, None, 0]
    # a limit bounds the names too: only what is read is named
    limited = with_data_label_names(CorpusConfig(sources=[SourceConfig(name="pets", format="jsonl", path=path,
                                                                       limit=2)]))
    assert limited.sources[0].label_names == ["cat", "dog"]


def test_integer_labels_keep_their_config_and_table(tmp_path):
    (tmp_path / "n.csv").write_text("text,label\nx,3\ny,\nz, 1\n")
    src = SourceConfig(name="nums", format="csv", path=str(tmp_path / "n.csv"))
    cfg = CorpusConfig(sources=[src, SourceConfig(name="digits", format="digits")])
    assert with_data_label_names(cfg) == cfg  # unchanged config: unchanged cache key
    assert [r["label"] for r in read_all(src)] == [3, None, 1]


def test_a_configured_table_maps_names_and_numbers(tmp_path):
    (tmp_path / "n.csv").write_text("text,label\nx,dog\ny,0\nz,cow\n")
    src = SourceConfig(name="pets", format="csv", path=str(tmp_path / "n.csv"), label_names=["cat", "dog"])
    recs = read_all(src)
    assert [(r["label"], r["reason"]) for r in recs] == [(1, ""), (0, ""), (None, "read_error")]
    assert recs[2]["detail"] == "label 'cow' is not one of the source's 2 label_names"
    with pytest.raises(ValueError, match=r"sources\[0\]\.label_names: .* 'pets' .* not in it: 'cow'"):
        with_data_label_names(CorpusConfig(sources=[src]))


def test_names_mixed_with_numbers_are_refused(tmp_path):
    path = write_index(tmp_path, [{"text": "a", "label": 1}, {"text": "b", "label": "cat"}])
    with pytest.raises(ValueError, match=r"sources\[0\]\.label_field: .* 1 record\(s\) with a number"):
        with_data_label_names(CorpusConfig(sources=[SourceConfig(name="s", format="jsonl", path=path)]))


def test_parquet_string_labels(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", "b", "c"], "label": ["zebra", None, "ant"]}), tmp_path / "p.parquet")
    cfg = with_data_label_names(CorpusConfig(sources=[SourceConfig(name="p", format="parquet",
                                                                   path=str(tmp_path / "p.parquet"))]))
    assert cfg.sources[0].label_names == ["ant", "zebra"]
    assert [r["label"] for r in read_all(cfg.sources[0])] == [1, None, 0]


def test_webdataset_names_need_a_configured_table(tmp_path):
    path = tmp_path / "00000.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in [("a.txt", b"one"), ("a.cls", b"dog\n"), ("b.txt", b"two"),
                           ("b.json", json.dumps({"label": "cat"}).encode()), ("c.txt", b"three"),
                           ("c.cls", b"cow")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    named = SourceConfig(name="w", format="webdataset", path=str(path), label_names=["cat", "dog"])
    recs = read_all(named)
    assert [(r["label"], r["reason"]) for r in recs] == [(1, ""), (0, ""), (None, "read_error")]
    assert recs[2]["detail"] == "bad .cls b'cow': label 'cow' is not one of the source's 2 label_names"
    bare = read_all(SourceConfig(name="w", format="webdataset", path=str(path)))
    assert [(r["label"], r["detail"]) for r in bare] == [(None, "bad .cls b'dog\\n'"), (None, ""),
                                                          (None, "bad .cls b'cow'")]


def test_a_table_that_lacks_names_is_a_config_error_naming_the_key(tmp_path):
    from pipelines.config import load_pipeline

    index = write_index(tmp_path / "data", [{"text": "a", "label": "cat"}, {"text": "b", "label": "emu"}])
    path = tmp_path / "p.yaml"
    path.write_text(f"name: t\nstages:\n  corpus:\n    uses: corpus\n    with:\n      sources:\n"
                    f"        - {{name: pets, format: jsonl, path: {index}, label_names: [cat, dog]}}\n")
    with pytest.raises(ConfigError, match=re.escape("p.yaml: stage 'corpus': with.sources[0].label_names: ")
                       + ".*'emu'"):
        load_pipeline(path, workdir=str(tmp_path / ".omniway"))


def test_the_cache_key_follows_the_names_in_the_data(tmp_path):
    from pipelines.config import load_pipeline
    from pipelines.dag import key_for

    path = tmp_path / "p.yaml"
    path.write_text(f"name: t\nstages:\n  corpus:\n    uses: corpus\n    with:\n      sources:\n"
                    f"        - {{name: pets, format: jsonl, path: {tmp_path / 'data'}}}\n")

    def key(labels):
        write_index(tmp_path / "data", [{"text": f"t{i}", "label": lab} for i, lab in enumerate(labels)])
        spec = load_pipeline(path, workdir=str(tmp_path / ".omniway"))
        return key_for(spec, "corpus", {}), spec.stages["corpus"].facts["label_names"]

    numbers = key([0, 1])
    assert numbers[1] == {} and key([1, 0, 1]) == numbers  # integer labels: the config's key alone
    pets, emu = key(["dog", "cat"]), key(["dog", "cat", "emu"])
    assert pets[1] == {"pets": ["cat", "dog"]} and emu[1] == {"pets": ["cat", "dog", "emu"]}
    assert len({numbers[0], pets[0], emu[0]}) == 3  # a new class name is a new corpus


# -- end to end -------------------------------------------------------------------------------------------
def beit3_checkpoint(path: str, vocab: int) -> None:
    """A random vision+text omniway model saved in unilm's BEiT-3 layout (scored without training)."""
    import torch

    from model import ModelConfig
    from model.interop.beit3 import omniway_to_beit3

    config = ModelConfig.from_size("debug", dim=32, layers=2, heads=4, ffn_dim=64, modalities=["vision", "text"],
                                   vision={"img_size": 32, "patch_size": 8},
                                   text={"vocab_size": vocab, "max_positions": 24})
    torch.manual_seed(0)
    torch.save({"model": omniway_to_beit3(config.build().eval().state_dict(), config)}, path)


PIPELINE = """
name: labelnames
stages:
  corpus:
    uses: corpus
    with:
      sources: [{{name: shapes, format: jsonl, path: {index}, id_field: id}}]
      val_fraction: 0.5
      rows_per_file: 64
      num_workers: 1
      plot_samples: 0
  text-tokenizer:
    uses: text-tokenizer
    needs: [corpus]
    with: {{vocab_size: 60, special_tokens: ["<mask>", "<image>", "<audio>", "<text>"]}}
  shards:
    uses: shards
    needs: [corpus, text-tokenizer]
    with: {{image_resolution: 32, max_text_tokens: 16, rows_per_file: 64}}
  evaluate:
    uses: evaluate
    needs: [shards, text-tokenizer]
    with:
      checkpoint: {{path: {checkpoint}, heads: 4}}
      suites:
        - {{name: shapes-zero-shot, task: zero_shot_classification, sources: [shapes],
           templates: ["a {{}}", "a picture of a {{}}"]}}
        - {{name: shapes-retrieval, task: retrieval, pairs: [[image, text]], examples: 2}}
      batch_size: 16
"""


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, local_ray_module):
    from conftest import Project

    root = tmp_path_factory.mktemp("labelnames")
    project = Project(root)
    checkpoint = str(root / "beit3.pth")
    beit3_checkpoint(checkpoint, vocab=60)  # the text-tokenizer's vocab_size
    path = project.write(PIPELINE.format(index=shapes_corpus(root / "data"), checkpoint=checkpoint))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("RAY_ADDRESS", raising=False)
        code, out, err = project.cli("run", str(path))
    assert code == 0, err[-4000:]
    return project, path


def manifest(project, stage: str) -> dict:
    dirs = project.manifest_dirs("labelnames", stage)
    assert len(dirs) == 1
    return json.loads((dirs[0] / "_manifest.json").read_text())


def test_the_table_goes_through_corpus_and_shards_into_zero_shot(evaluated):
    import pyarrow.parquet as pq

    project, _ = evaluated
    names = sorted(SHAPES)
    corpus = manifest(project, "corpus")
    assert corpus["extra"]["label_names"] == {"shapes": names}
    assert manifest(project, "shards")["extra"]["label_names"] == {"shapes": names}
    # every stored label is its name's place in the sorted table
    corpus_dir = project.manifest_dirs("labelnames", "corpus")[0]
    rows = [r for f in corpus["files"] if f["path"].startswith(("train/", "val/"))
            for r in pq.read_table(corpus_dir / f["path"], columns=["sample_id", "label"]).to_pylist()]
    assert len(rows) == len(SHAPES) * PER_SHAPE
    assert all(names[r["label"]] == re.sub(r"\d+$", "", r["sample_id"].split(":")[-1]) for r in rows)
    out_dir = project.manifest_dirs("labelnames", "evaluate")[0]
    zero_shot = json.loads((out_dir / "shapes-zero-shot" / "metrics.json").read_text())
    assert zero_shot["data"]["classes"] == 3 and zero_shot["data"]["n"] == corpus["extra"]["rows_per_split"]["val"]
    assert zero_shot["baselines"]["acc1"] == pytest.approx(1 / 3)
    html = (out_dir / "report.html").read_text()
    confusion = html[html.index('class="confusion"'):]
    confusion = confusion[:confusion.index("</table>")]
    assert re.findall(r'<th scope="col">(\w+)</th>', confusion) == names  # the report names the classes
    assert re.findall(r'<th scope="row">(\w+)</th>', confusion) == names


def test_report_compare_set_shows_the_differences_of_a_rerun(evaluated):
    from pipelines.evaluation.tables import format_difference, format_value

    import yaml

    project, path = evaluated
    # `--set` reaches into mappings, not list items: the suites list is given whole, each with a limit
    suites = yaml.safe_load(path.read_text())["stages"]["evaluate"]["with"]["suites"]
    overrides = ["evaluate.suites=" + json.dumps([dict(s, limit=4) for s in suites])]
    sets = [a for o in overrides for a in ("--set", o)]
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("RAY_ADDRESS", raising=False)
        code, _, err = project.cli("run", str(path), *sets)
        assert code == 0, err[-4000:]
        compare = [a for o in overrides for a in ("--compare-set", o)]
        code, printed, err = project.cli("report", str(path), "--workdir", str(project.workdir), *compare)
    assert code == 0, err
    runs = {}
    for d in project.manifest_dirs("labelnames", "evaluate"):
        results = json.loads((d / "results.json").read_text())
        runs[results[0]["data"]["n"] == 4] = {(r["suite"], k): v for r in results for k, v in r["metrics"].items()}
    full, limited = runs[False], runs[True]
    lines = [ln for ln in printed.splitlines() if ln.startswith("|")][2:]
    cells = [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines]
    suite, deltas = "", {}
    for row in cells:
        suite = row[0] or suite
        deltas[(suite, row[1])] = row
    assert set(deltas) == set(full) == set(limited)
    for key, row in deltas.items():
        assert row[3:] == [format_value(full[key]), format_value(limited[key]),
                           format_difference(float(limited[key]) - float(full[key]))]
    # a gallery of 4 ranks its positives within 4; the full one does not
    assert full[("shapes-retrieval", "image_to_text/mean_rank")] != limited[("shapes-retrieval",
                                                                            "image_to_text/mean_rank")]
    assert any(float(row[-1]) != 0.0 for row in deltas.values())
