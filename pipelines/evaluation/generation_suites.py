"""The generation suites of instruct models: captioning, VQA, ASR (lmms-eval's tasks on instruction rows).

An item is one prompt about one media: instruction rows with the same media (by digest) and the same prompt
are one item whose references are all their answers (an image with five captions, a question ten people
answered: VQAv2's min(1, matches / 3) then applies). The prompt is the first row's ids before its last
answer (media placeholders and the conversation so far, formatted by the chat template the model was
tuned with). Answers are generated on Ray Data actors (``workers.generations``) with the suite's decoding
settings; the figures come from pycocoevalcap's scorers and jiwer (``tasks.text_metrics``), each beside a
baseline on the same items: the most frequent training caption, the majority training answer, the empty
transcript. Each row of predictions.jsonl carries its item's own score (``cider``, ``accuracy``, ``wer``);
the ASR report lists every utterance's WER, not only the first ``examples``.
"""

from __future__ import annotations

from pipelines.evaluation import data as rows_of
from pipelines.evaluation.workers import generations

_COLUMNS = ["modalities", "text_ids", "loss_mask", "pixels", "fbank", "fbank_frames"]


def _rows(run, split: str) -> list[dict]:
    s = run.suite
    return [r for r in rows_of.choose(rows_of.read_meta(run.data, split), sources=s.sources, tasks=s.tasks)
            if r.get("answer")]


def _items(run) -> list[dict]:
    """The suite's items (see the module docs), in sample id order, the first ``limit``."""
    s = run.suite
    rows = _rows(run, s.split)
    if not rows:
        raise ValueError(f"{run.where}: no {s.split} rows of tasks {s.tasks} in {run.data.stage!r} "
                         f"(sources {s.sources or 'all'})")
    digests = rows_of.media_digests(run.data, s.split, [r["sample_id"] for r in rows])
    items: dict[tuple, dict] = {}
    for r in rows:
        item = items.setdefault((digests[r["sample_id"]], r.get("prompt") or ""), {**r, "references": []})
        item["references"].append(r["answer"])
    out = list(items.values())
    return out[:s.limit] if s.limit else out


def _generate(run) -> tuple[list[dict], dict[str, str]]:
    s = run.suite
    items = _items(run)
    decoding = {"max_new_tokens": s.max_new_tokens, "min_new_tokens": s.min_new_tokens, "num_beams": s.num_beams,
                "length_penalty": s.length_penalty, "no_repeat_ngram_size": s.no_repeat_ngram_size}
    m = run.data
    ds = rows_of.read_rows(m, s.split, [r["sample_id"] for r in items], _COLUMNS)
    return items, generations(ds, run.model_source(), decoding=decoding,
                              resolution=int(m.extra.get("image_resolution", 224)),
                              ids=m.extra["tokenizers"]["text"]["ids"], **run.actor_options())


def _baseline_answers(run, items: list[dict]) -> tuple[list[str], str]:
    """The answers a constant baseline is drawn from: the train split's (same sources and tasks), else the
    evaluated references themselves (said in the baseline's name)."""
    train = [r["answer"] for r in _rows(run, "train")]
    if train:
        return train, "training"
    return [a for r in items for a in r["references"]], "evaluated (no training rows)"


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
                    "prediction": predictions.get(sid, ""), "references": r["references"],
                    "scores": (scores or {}).get(sid, {})})
    return out


def _predictions(items, predictions, scores: dict[str, dict]) -> list[dict]:
    """predictions.jsonl's rows: ``{id, prediction, references, prompt}`` and the item's scores."""
    return [{"id": r["sample_id"], "prediction": predictions.get(r["sample_id"], ""), "references": r["references"],
             "prompt": r.get("prompt") or "", **scores.get(r["sample_id"], {})} for r in items]


def _utterances(items, references: list[str], predictions: dict[str, str], scores: dict[str, dict]) -> list[dict]:
    """Every utterance's WER for the report, in item order (text only: the first ``examples`` also show as
    samples, with their media)."""
    return [{"id": r["sample_id"], "prediction": predictions.get(r["sample_id"], ""), "reference": ref,
             "wer": scores[r["sample_id"]]["wer"]} for r, ref in zip(items, references)]


def captioning(run) -> dict:
    from tasks.text_metrics import captioning_baseline, captioning_scores

    items, predictions = _generate(run)
    refs = {r["sample_id"]: r["references"] for r in items}
    out = captioning_scores({sid: predictions.get(sid, "") for sid in refs}, refs)
    pool, where = _baseline_answers(run, items)
    base = captioning_baseline(pool, refs, meteor=bool(out.get("meteor_ran")))
    names = ["bleu4", "cider", "rouge_l"] + (["meteor"] if out.get("meteor") is not None else [])
    scores = {sid: {"cider": v["cider"]} for sid, v in out["per_item"].items()}
    result = run.result(len(items), {k: out[k] for k in names}, {k: base[k] for k in names if base.get(k) is not None},
                        f"most frequent {where} caption ({base['prediction']!r})", "cider",
                        details={"samples": _samples(run, items, predictions, scores)})
    result["predictions"] = _predictions(items, predictions, scores)
    return result


def vqa(run) -> dict:
    from tasks.text_metrics import most_frequent_answer, vqa_accuracy, vqa_scores

    items, predictions = _generate(run)
    answers = [r["references"] for r in items]
    preds = [predictions.get(r["sample_id"], "") for r in items]
    pool, where = _baseline_answers(run, items)
    majority = most_frequent_answer(pool)
    per_item = vqa_scores(preds, answers)
    scores = {r["sample_id"]: {"accuracy": v} for r, v in zip(items, per_item)}
    result = run.result(len(items), {"accuracy": sum(per_item) / len(per_item)},
                        {"accuracy": vqa_accuracy([majority] * len(items), answers)},
                        f"majority {where} answer ({majority!r})", "accuracy",
                        details={"samples": _samples(run, items, predictions, scores)})
    result["predictions"] = _predictions(items, predictions, scores)
    return result


def asr(run) -> dict:
    from tasks.text_metrics import asr_baseline, asr_scores

    items, predictions = _generate(run)
    refs = [r["references"][0] for r in items]  # one transcript per clip (the first, when rows repeat it)
    out = asr_scores([predictions.get(r["sample_id"], "") for r in items], refs)
    empty = asr_baseline(refs)
    scores = {r["sample_id"]: {"wer": w} for r, w in zip(items, out["per_utterance_wer"])}
    result = run.result(len(items), {"wer": out["wer"], "cer": out["cer"]}, {"wer": empty["wer"], "cer": empty["cer"]},
                        "empty transcript", "wer", lower_is_better=["wer", "cer"],
                        details={"samples": _samples(run, items, predictions, scores),
                                 "utterances": _utterances(items, refs, predictions, scores)})
    result["predictions"] = _predictions(items, predictions, scores)
    return result
