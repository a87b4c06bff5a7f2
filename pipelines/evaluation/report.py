"""The evaluate stage's report.html: one self-contained page (inline CSS, images as data: URIs,
no script) with a summary of every suite's headline figure against its baseline, then a section
per suite with all its metrics, the model and data it scored, its settings and whatever details
it kept (confusion matrix, retrieval examples, generation samples, WER per utterance).

The page holds no timestamp or path, so rerunning an evaluation that reproduces its results
reproduces the file byte for byte (and leaves the stage's fingerprint unchanged).
"""

from __future__ import annotations

import os
from typing import Any

from pipelines.evaluation.report_html import (CSS, confusion_html, retrieval_html, samples_html,
                                              settings_html, text, utterances_html)
from pipelines.evaluation.tables import (beats, difference, direction_arrow, format_difference,
                                         format_value)


def render_report(results: list[dict], path: str, *, title: str, subtitle: str = "") -> None:
    """Write the report of an evaluation's results to `path` (parent folders are created).

    Args:
        results: one dict per suite, in the order to show them::

            {"suite": name, "task": "retrieval" | "zero_shot_classification" | "linear_probe"
                                    | "captioning" | "vqa" | "asr",
             "data": {"stage", "key", "split", "n", "modality"},
             "model": {"stage", "kind", "key"},
             "metrics": {name: value}, "baselines": {name: value} (a subset of metrics),
             "baseline_name": what the baseline is ("chance", "majority answer"...),
             "lower_is_better": [metric names], "headline": the summary's metric,
             "settings": {free-form},
             "details": {"confusion": {"labels", "matrix"} (rows true, columns predicted),
                         "retrieval_examples": [{"direction", "query", "hits"}],
                         "samples": [{"id", "image_png", "audio", "prompt", "prediction",
                                      "references", "scores"}],
                         "utterances": [{"id", "wer", "prediction", "reference"}] (ASR: every
                                        utterance)}}  (details and its keys optional)

            Images are PNG (or JPEG) bytes; see report_html for each detail's shape.
        path: the file to write (report.html).
        title: the page's heading (and <title>).
        subtitle: a line under the heading (e.g. the pipeline and the model evaluated).
    """
    sections = "".join(_suite_section(i, r) for i, r in enumerate(results))
    subtitle_html = f"<p>{text(subtitle)}</p>" if subtitle else ""
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{text(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f'<header class="page"><h1>{text(title)}</h1>{subtitle_html}</header>\n<main>\n'
        f"{_summary_section(results)}\n{sections}\n"
        "<footer>written by omniway&rsquo;s evaluate stage</footer>\n</main>\n</body>\n</html>\n")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)


def _summary_section(results: list[dict]) -> str:
    """One row per suite: its headline metric's value against the baseline. A model shared by
    every suite (the usual case: one evaluate stage, one model) is named once above the table
    rather than in a column repeating it."""
    if not results:
        return '<section id="summary"><h2>Summary</h2><p class="muted">No suites ran.</p></section>'
    models = [result.get("model") or {} for result in results]
    shared_model = all(m == models[0] for m in models)
    rows = []
    for i, result in enumerate(results):
        metric = result.get("headline") or next(iter(result.get("metrics") or {}), "")
        value = (result.get("metrics") or {}).get(metric)
        baseline = (result.get("baselines") or {}).get(metric)
        data = result.get("data") or {}
        model_cell = "" if shared_model else f'<td class="nowrap">{_model_cell(models[i])}</td>'
        rows.append(
            "<tr>"
            f'<td class="nowrap"><a href="#suite-{i}">{text(result.get("suite", ""))}</a></td>'
            f'<td>{text(_task_name(result.get("task", "")))}</td>'
            f'<td class="nowrap">{_data_cell(data)}</td>{model_cell}'
            f'<td class="num">{text(format_value(data.get("n")))}</td>'
            f"<td>{text(metric)}</td>"
            f'<td class="arrow">{direction_arrow(result, metric)}</td>'
            f'<td class="num"><b>{text(format_value(value))}</b></td>'
            f"{_baseline_cells(result, metric, value, baseline)}"
            "</tr>")
    head = _head(["Suite", "Task", "Data"] + ([] if shared_model else ["Model"])
                 + [("n", "num"), "Headline", "↑/↓", ("Value", "num"), ("Baseline", "num"),
                    ("Δ", "num")])
    model_line = (f'<span>model {_model_cell(models[0])}</span>' if shared_model else "")
    return ('<section id="summary"><h2>Summary</h2>'
            f'<div class="meta">{model_line}<span>&uarr; higher is better, &darr; lower is '
            'better</span><span>&Delta; = value &minus; baseline, green where it beats the '
            'baseline</span></div>'
            f'<div class="scroll"><table class="grid wide summary">{head}<tbody>{"".join(rows)}'
            "</tbody></table></div></section>")


def _suite_section(index: int, result: dict) -> str:
    """A suite's metrics, provenance, settings and details."""
    data, model = result.get("data") or {}, result.get("model") or {}
    metrics, baselines = result.get("metrics") or {}, result.get("baselines") or {}
    headline = result.get("headline")
    rows = []
    for metric, value in metrics.items():
        row_class = ' class="headline"' if metric == headline else ""
        rows.append(f"<tr{row_class}><td>{text(metric)}</td>"
                    f'<td class="arrow">{direction_arrow(result, metric)}</td>'
                    f'<td class="num">{text(format_value(value))}</td>'
                    f"{_baseline_cells(result, metric, value, baselines.get(metric))}</tr>")
    baseline_name = result.get("baseline_name") or "baseline"
    head = _head(["Metric", "↑/↓", ("Value", "num"), (f"Baseline ({baseline_name})", "num"),
                  ("Δ vs baseline", "num")])
    meta = [f"<span>data {_data_cell(data)}</span>"]
    if data.get("n") is not None:
        meta.append(f"<span>n = {text(format_value(data['n']))}</span>")
    if data.get("modality"):
        meta.append(f"<span>modality {text(data['modality'])}</span>")
    meta.append(f"<span>model {_model_cell(model)}</span>")
    details = result.get("details") or {}
    parts = [
        f'<section class="suite" id="suite-{index}">',
        f'<h2>{text(result.get("suite", ""))}<span class="tag">'
        f'{text(_task_name(result.get("task", "")))}</span></h2>',
        f'<div class="meta">{"".join(meta)}</div>',
        f'<table class="grid metrics">{head}<tbody>{"".join(rows)}</tbody></table>',
        "<h3>Settings</h3>", settings_html(result.get("settings") or {}),
    ]
    if details.get("confusion"):
        parts += ["<h3>Confusion matrix</h3>", confusion_html(details["confusion"])]
    if details.get("retrieval_examples"):
        parts += ["<h3>Retrieval examples</h3>", retrieval_html(details["retrieval_examples"])]
    if details.get("samples"):
        parts += [f"<h3>Samples ({len(details['samples'])})</h3>", samples_html(details["samples"])]
    if details.get("utterances"):
        parts += [f"<h3>WER per utterance ({len(details['utterances'])})</h3>",
                  utterances_html(details["utterances"])]
    parts.append("</section>")
    return "\n".join(parts)


def _baseline_cells(result: dict, metric: str, value: Any, baseline: Any) -> str:
    """The baseline's value and the difference from it, coloured by whether the metric beats it."""
    verdict = beats(result, metric, value, baseline)
    css = {True: "better", False: "worse", None: ""}[verdict]
    return (f'<td class="num">{text(format_value(baseline))}</td>'
            f'<td class="num {css}">{text(format_difference(difference(value, baseline)))}</td>')


def _data_cell(data: dict) -> str:
    parts = [f'<code>{text(data[k])}</code>' for k in ("stage", "key") if data.get(k)]
    if data.get("split"):
        parts.append(text(data["split"]))
    return " ".join(parts)


def _model_cell(model: dict) -> str:
    stage, kind = model.get("stage"), model.get("kind")
    # the kind is said only where it differs from the stage's name (a stage named after its kind)
    label = text(stage or kind or "") + (f" ({text(kind)})" if kind and stage and kind != stage else "")
    key = f' <code>{text(model["key"])}</code>' if model.get("key") else ""
    return label + key


def _task_name(task: str) -> str:
    return str(task).replace("_", " ")


def _head(columns: list) -> str:
    """A <thead> row; a column is a heading, or (heading, css class)."""
    cells = []
    for column in columns:
        name, css = column if isinstance(column, tuple) else (column, "")
        cells.append(f'<th class="{css}">{text(name)}</th>' if css else f"<th>{text(name)}</th>")
    return f"<thead><tr>{''.join(cells)}</tr></thead>"
