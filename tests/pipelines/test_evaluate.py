"""The `evaluate` stage at the end of the whole chain on a slice of the real demo corpora, through `omniway run`
on a real embedded Ray and MLflow (sqlite): corpus -> tokenizer -> shards -> pretrain -> instructions ->
instruct -> evaluate with every suite; metrics.json / predictions.jsonl / report.html; the label names
through corpus and shards; `omniway report`; config errors before anything runs."""

from __future__ import annotations

import json
import os

import pytest
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.usefixtures("local_ray"), pytest.mark.slow]

TRAIN = "{steps: 6, micro_batch_size: 8, num_workers: 1, cpus_per_worker: 1, precision: fp32, zero_stage: 0, " \
        "checkpoint_every: 6, log_every: 3, lr: 0.001, warmup_steps: 1}"

PIPELINE = f"""
name: evalslice
stages:
  corpus:
    uses: corpus
    with:
      sources:
        - {{name: tuxpaint, format: tuxpaint, path: /usr/share/tuxpaint/stamps/animals/mammals, limit: 40}}
        - {{name: asterisk, format: asterisk, path: /usr/share/asterisk/sounds/en_US_f_Allison/digits, limit: 20}}
        - {{name: digits, format: digits, limit: 200}}
        - {{name: pydocs, format: text, path: /usr/share/doc/python3.11/html/_sources, extensions: [.rst.txt],
           text_unit: paragraph, max_files: 3}}
      val_fraction: 0.3
      rows_per_file: 128
  text-tokenizer:
    uses: text-tokenizer
    needs: [corpus]
    with: {{vocab_size: 500, special_tokens: ["<mask>", "<image>", "<audio>", "<text>"]}}
  shards:
    uses: shards
    needs: [corpus, text-tokenizer]
    with: {{image_resolution: 32, max_text_tokens: 32, rows_per_file: 128}}
  pretrain:
    uses: pretrain
    needs: [shards]
    with: {{size: debug, mim_target: pixels, train: {TRAIN}}}
  instructions:
    uses: instructions
    needs: [corpus, text-tokenizer, pretrain]
    with:
      sources: [{{name: easy-vqa, format: easy-vqa, limit: 40}}]
      max_text_tokens: 64
      records_per_task: 256
  instruct:
    uses: instruct
    needs: [pretrain, instructions]
    with: {{val_samples: 2, train: {TRAIN}}}
  evaluate:
    uses: evaluate
    needs: [pretrain, instruct, shards, instructions, text-tokenizer]
    with:
      suites:
        - {{name: digits-zero-shot, task: zero_shot_classification, sources: [digits],
           templates: ["a handwritten digit {{}}", "the digit {{}}"]}}
        - {{name: retrieval, task: retrieval, examples: 4}}
        - {{name: digits-probe, task: linear_probe, sources: [digits]}}
        - {{name: vqa, task: vqa, sources: [easy-vqa], max_new_tokens: 3}}
        - {{name: captions, task: captioning, sources: [tuxpaint], max_new_tokens: 6}}
        - {{name: transcripts, task: asr, sources: [asterisk], max_new_tokens: 6, num_beams: 2}}
      batch_size: 32
"""


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, local_ray_module):
    from conftest import Project

    project = Project(tmp_path_factory.mktemp("evaluate"))
    path = project.write(PIPELINE)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("RAY_ADDRESS", raising=False)
        code, out, err = project.cli("run", str(path))
    assert code == 0, err[-4000:]
    dirs = project.manifest_dirs("evalslice", "evaluate")
    assert len(dirs) == 1
    return project, path, out, dirs[0]


def results(out_dir) -> dict[str, dict]:
    return {r["suite"]: r for r in json.loads((out_dir / "results.json").read_text())}


def test_every_suite_writes_its_metrics_beside_a_baseline(evaluated):
    project, _, _, out_dir = evaluated
    res = results(out_dir)
    assert sorted(res) == sorted(["digits-zero-shot", "retrieval", "digits-probe", "vqa", "captions", "transcripts"])
    pre = json.loads((project.manifest_dirs("evalslice", "pretrain")[0] / "_manifest.json").read_text())
    ins = json.loads((project.manifest_dirs("evalslice", "instruct")[0] / "_manifest.json").read_text())
    for name, r in res.items():
        on_disk = json.loads((out_dir / name / "metrics.json").read_text())
        assert on_disk == r  # results.json gathers the suites' metrics.json
        assert {"suite", "task", "data", "model", "metrics", "baselines", "settings"} <= set(r)
        assert r["baselines"] and set(r["baselines"]) <= set(r["metrics"])
        assert r["data"]["n"] > 0 and r["data"]["split"] == "val"
        generation = r["task"] in ("vqa", "captioning", "asr")
        want = ins if generation else pre
        assert r["model"] == {"stage": want["stage"], "kind": want["kind"], "key": want["key"]}
        assert r["data"]["stage"] == ("instructions" if generation else "shards")
        if generation:
            lines = (out_dir / name / "predictions.jsonl").read_text().splitlines()
            preds = [json.loads(x) for x in lines]
            assert len(preds) == r["data"]["n"] and all({"id", "prediction", "references"} <= set(p) for p in preds)
            assert all(isinstance(p["prediction"], str) and p["references"] for p in preds)


def test_zero_shot_takes_the_corpus_label_names(evaluated):
    project, _, _, out_dir = evaluated
    shards = json.loads((project.manifest_dirs("evalslice", "shards")[0] / "_manifest.json").read_text())
    assert shards["extra"]["label_names"] == {"digits": [str(d) for d in range(10)]}
    r = results(out_dir)["digits-zero-shot"]
    assert r["data"]["classes"] == 10
    assert r["baselines"]["acc1"] == pytest.approx(0.1) and r["baselines"]["acc5"] == pytest.approx(0.5)
    assert 0.0 <= r["metrics"]["acc1"] <= r["metrics"]["acc5"] <= 1.0
    matrix = r["details"]["confusion"]["matrix"] if "details" in r else None
    assert matrix is None  # the confusion matrix is for the report, not metrics.json


def test_retrieval_figures_are_consistent(evaluated):
    r = results(evaluated[3])["retrieval"]
    m, b = r["metrics"], r["baselines"]
    for d in ("image_to_text", "text_to_image", "audio_to_text", "text_to_audio"):
        assert 0.0 <= m[f"{d}/r@1"] <= m[f"{d}/r@5"] <= m[f"{d}/r@10"] <= 1.0
        assert 0.0 < b[f"{d}/r@1"] <= b[f"{d}/r@10"] <= 1.0
        assert 1.0 <= m[f"{d}/median_rank"] and 1.0 <= m[f"{d}/mean_rank"]
    # the digits repeat their captions: "a handwritten digit N" is one text candidate for every image of N
    items = r["data"]["items"]["image_text"]
    assert items["text"] < items["image"] <= items["pairs"]
    assert b["image_to_text/r@1"] == pytest.approx(1.0 / items["text"])  # each image has one distinct caption
    assert b["text_to_image/r@1"] > 1.0 / items["image"]  # a digit caption has several positive images
    assert "image_to_text/mean_rank" in r["lower_is_better"] and b["image_to_text/mean_rank"] > 1.0


def test_generation_baselines(evaluated):
    res = results(evaluated[3])
    assert res["transcripts"]["baselines"]["wer"] == pytest.approx(1.0)
    assert res["transcripts"]["lower_is_better"] == ["wer", "cer"]
    assert 0.0 <= res["vqa"]["metrics"]["accuracy"] <= 1.0 and 0.0 <= res["vqa"]["baselines"]["accuracy"] <= 1.0
    assert {"bleu4", "cider", "rouge_l"} <= set(res["captions"]["metrics"])
    assert res["digits-probe"]["baseline_name"].startswith("majority")
    # every utterance's own WER, in predictions.jsonl and in the report (all of them, not the examples only)
    out_dir = evaluated[3]
    preds = [json.loads(x) for x in (out_dir / "transcripts" / "predictions.jsonl").read_text().splitlines()]
    assert preds and all(isinstance(p["wer"], float) and p["wer"] >= 0 for p in preds)
    assert f"WER per utterance ({len(preds)})" in (out_dir / "report.html").read_text()


def test_summary_report_and_mlflow(evaluated):
    project, path, out, out_dir = evaluated
    assert "evaluation (evaluate):" in out and "| digits-zero-shot" in out
    report = out_dir / "report.html"
    assert f"report: {report}" in out
    html = report.read_text()
    assert all(name in html for name in results(out_dir)) and "data:image/png;base64," in html
    code, printed, err = project.cli("report", str(path), "--workdir", str(project.workdir))
    assert code == 0, err
    assert "| vqa" in printed and "accuracy" in printed
    code, printed, err = project.cli("report", str(path), "--workdir", str(project.workdir), "--compare", str(path))
    assert code == 0, err
    assert "+0.0000" in printed or "0.0000" in printed
    manifest = json.loads((out_dir / "_manifest.json").read_text())
    client = MlflowClient(project.tracking_uri)
    run = client.get_run(manifest["mlflow_run_id"])
    assert "digits-zero-shot/acc1" in run.data.metrics and "digits-zero-shot/baseline/acc1" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "report.html" in artifacts and "results.json" in artifacts and "vqa" in artifacts


def test_instruct_logs_its_validation_answers_as_an_mlflow_table(evaluated):
    project = evaluated[0]
    manifest = json.loads((project.manifest_dirs("evalslice", "instruct")[0] / "_manifest.json").read_text())
    client = MlflowClient(project.tracking_uri)
    run_id = manifest["mlflow_run_id"]
    table = json.loads(open(client.download_artifacts(run_id, "val_answers_step6.json")).read())
    assert table["columns"] == ["group", "media", "prompt", "generated", "reference"]
    rows = table["data"]
    assert len(rows) == 2 and all(r[2].startswith("USER:") and r[4] for r in rows)
    # every media cell is an image MLflow stored beside the table
    images = {a.path for a in client.list_artifacts(run_id, "table_images/val_answers_step6")}
    assert all(r[1]["type"] == "image" and r[1]["filepath"] in images for r in rows)


def _overwrite(part):
    with open(part, "r+b") as f:  # 4 KiB overwritten in place: same size
        f.seek(part.stat().st_size // 2)
        f.write(b"\0" * 4096)


@pytest.mark.parametrize("damage, why", [
    (_overwrite, "sha256 differs"),
    (lambda part: part.write_bytes(part.read_bytes()[:1000]), "size 1000"),
    (lambda part: part.unlink(), "missing"),
    (lambda part: os.utime(part, ns=(part.stat().st_mtime_ns + 10**10,) * 2), None),  # touched, unchanged
])
def test_a_damaged_shard_file_is_rebuilt_and_nothing_below_it_reruns(evaluated, damage, why):
    """Integrity on the demo slice (runs after the tests above read the outputs): a shards part overwritten in
    place, truncated or deleted is reported damaged, and `run` rebuilds the shards alone (same bytes:
    everything below stays cached); a part only touched is hashed once, accepted, and nothing runs."""
    project, path, _, _ = evaluated
    (shards_dir,) = project.manifest_dirs("evalslice", "shards")
    part = sorted((shards_dir / "train").glob("part-*.parquet"))[0]
    original = part.read_bytes()
    damage(part)
    code, out, err = project.cli("status", str(path))
    line = next(x for x in out.splitlines() if x.startswith("shards "))
    below = next(x for x in out.splitlines() if x.startswith("pretrain "))
    if why is None:
        assert " cached " in line and " cached " in below, out
    else:
        assert " damaged " in line and f"{part.parent.name}/{part.name} ({why}" in line, line
        # below it, nothing is trusted until the rebuild says what the shards are
        assert "input shards will be rebuilt" in below, below
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        code, out, err = project.cli("run", str(path))
    assert code == 0, err[-3000:]
    ran = [x.split()[2] for x in out.splitlines() if x.startswith("[") and " > " in x]
    # rebuilt to the same bytes: pretrain, instruct, evaluate stay cached
    assert ran == ([] if why is None else ["shards"]), ran
    if why is not None:
        assert "= pretrain: cached" in out and "= evaluate: cached" in out
    assert part.read_bytes() == original


@pytest.mark.parametrize("suite, needs, message", [
    ("{name: a, task: vqa}", "[pretrain, shards, text-tokenizer]", "reads rows of a `instructions` stage"),
    ("{name: a, task: zero_shot_classification, sources: [digits]}", "[pretrain, shards]", "text-tokenizer"),
    ("{name: a, task: retrieval, data: pretrain}", "[pretrain, shards, text-tokenizer]", "is not a `shards` input"),
    ("{name: a, task: zero_shot_classification, templates: [nope]}", "[pretrain, shards, text-tokenizer]",
     "holds `{}` once"),
    ("{name: a/b, task: retrieval}", "[pretrain, shards, text-tokenizer]", "unique name"),
])
def test_config_errors_name_the_key_before_anything_runs(project, suite, needs, message):
    body = PIPELINE.split("  instructions:")[0] + f"""
  evaluate:
    uses: evaluate
    needs: {needs}
    with:
      suites: [{suite}]
"""
    path = project.write(body)
    code, out, err = project.cli("run", str(path), "--dry-run")
    assert code == 2 and message in err and "stage 'evaluate'" in err, err
    assert not project.manifest_dirs("evalslice", "corpus")
