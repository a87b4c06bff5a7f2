"""The generation suites of instruct models: captioning, VQA, ASR (lmms-eval's tasks on instruction rows).

The prompt of an item is its instruction row's ids before the first answer token (media placeholders and
the user turn, formatted by the chat template the model was tuned with); the reference is the row's
answer. Answers are generated on Ray Data actors (``workers.generations``) with the suite's decoding
settings; the figures come from pycocoevalcap's scorers and jiwer (``tasks.text_metrics``), each beside a
baseline on the same items: the most frequent training caption, the majority training answer, the
empty transcript.
"""

from __future__ import annotations

from pipelines.evaluation import data as rows_of
from pipelines.evaluation.workers import generations

_COLUMNS = ["modalities", "text_ids", "causal_start", "pixels", "fbank", "fbank_frames"]


def _items(run, split: str, limit: int) -> list[dict]:
    s = run.suite
    rows = rows_of.choose(rows_of.read_meta(run.data, split), sources=s.sources, tasks=s.tasks, limit=limit)
    return [r for r in rows if r.get("answer")]


def _generate(run) -> tuple[list[dict], dict[str, str]]:
    s = run.suite
    items = _items(run, s.split, s.limit)
    if not items:
        raise ValueError(f"{run.where}: no {s.split} rows of tasks {s.tasks} in {run.data.stage!r} "
                         f"(sources {s.sources or 'all'})")
    decoding = {"max_new_tokens": s.max_new_tokens, "min_new_tokens": s.min_new_tokens, "num_beams": s.num_beams,
                "length_penalty": s.length_penalty, "no_repeat_ngram_size": s.no_repeat_ngram_size}
    ds = rows_of.read_rows(run.data, s.split, [r["sample_id"] for r in items], _COLUMNS)
    return items, generations(ds, run.model_source(), decoding=decoding, **run.actor_options())


def _train_answers(run) -> list[str]:
    return [r["answer"] for r in _items(run, "train", 0)]


def _samples(run, items: list[dict], predictions: dict[str, str], scores=None) -> list[dict]:
    """The report's first items: thumbnail, prompt, answer, references (and a per-item score)."""
    first = items[:run.suite.examples]
    media = rows_of.media_of(run.data, run.suite.split, [r["sample_id"] for r in first], ["pixels"])
    R = int(run.data.extra.get("image_resolution", 224))
    out = []
    for r in first:
        sid = r["sample_id"]
        out.append({"id": sid, "image_png": rows_of.thumbnail_png(media.get(sid, {}).get("pixels"), R),
                    "audio": sid if "audio" in r["modalities"] else None, "prompt": r.get("prompt") or "",
                    "prediction": predictions.get(sid, ""), "references": [r["answer"]],
                    "scores": (scores or {}).get(sid, {})})
    return out


def _predictions(items, predictions) -> list[dict]:
    return [{"id": r["sample_id"], "prediction": predictions.get(r["sample_id"], ""), "references": [r["answer"]],
             "prompt": r.get("prompt") or ""} for r in items]


def captioning(run) -> dict:
    from tasks.text_metrics import captioning_baseline, captioning_scores

    items, predictions = _generate(run)
    refs = {r["sample_id"]: [r["answer"]] for r in items}
    out = captioning_scores({sid: predictions.get(sid, "") for sid in refs}, refs)
    base = captioning_baseline(_train_answers(run) or [""], refs)
    names = ["bleu4", "cider", "rouge_l"] + (["meteor"] if out.get("meteor") is not None else [])
    scores = {sid: {"cider": v["cider"]} for sid, v in out["per_item"].items()}
    result = run.result(len(items), {k: out[k] for k in names}, {k: base[k] for k in names if base.get(k) is not None},
                        f"most frequent training caption ({base['prediction']!r})", "cider",
                        details={"samples": _samples(run, items, predictions, scores)})
    result["predictions"] = _predictions(items, predictions)
    return result


def vqa(run) -> dict:
    from tasks.text_metrics import most_frequent_answer, vqa_accuracy, vqa_scores

    items, predictions = _generate(run)
    answers = [[r["answer"]] for r in items]
    preds = [predictions.get(r["sample_id"], "") for r in items]
    train = _train_answers(run)
    majority = most_frequent_answer(train) if train else ""
    per_item = vqa_scores(preds, answers)
    scores = {r["sample_id"]: {"accuracy": v} for r, v in zip(items, per_item)}
    result = run.result(len(items), {"accuracy": sum(per_item) / len(per_item)},
                        {"accuracy": vqa_accuracy([majority] * len(items), answers)},
                        f"majority training answer ({majority!r})", "accuracy",
                        details={"samples": _samples(run, items, predictions, scores)})
    result["predictions"] = _predictions(items, predictions)
    return result


def asr(run) -> dict:
    from tasks.text_metrics import asr_baseline, asr_scores

    items, predictions = _generate(run)
    refs = [r["answer"] for r in items]
    out = asr_scores([predictions.get(r["sample_id"], "") for r in items], refs)
    empty = asr_baseline(refs)
    scores = {r["sample_id"]: {"wer": w} for r, w in zip(items, out["per_utterance_wer"])}
    result = run.result(len(items), {"wer": out["wer"], "cer": out["cer"]}, {"wer": empty["wer"], "cer": empty["cer"]},
                        "empty transcript", "wer", lower_is_better=["wer", "cer"],
                        details={"samples": _samples(run, items, predictions, scores)})
    result["predictions"] = _predictions(items, predictions)
    return result
