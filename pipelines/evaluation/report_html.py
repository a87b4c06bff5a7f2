"""HTML pieces of the evaluate stage's report (pipelines/evaluation/report.py): the style sheet,
inline thumbnails and the renderers of a suite's optional details (confusion matrix, retrieval
examples, generation samples, WER per utterance).

Every piece of text taken from a result passes through `text()` (html.escape), so a caption
holding markup shows literally; images are inlined as data: URIs so the page needs nothing else.
"""

from __future__ import annotations

import base64
import html
import numbers
import struct
from typing import Any

from pipelines.evaluation.tables import format_value

# Thumbnails smaller than this many pixels wide are scaled up without smoothing (8x8 digits would
# otherwise blur into grey); larger ones are scaled down smoothly.
PIXELATED_BELOW = 64
# Scores where a lower value is better, coloured from green (0) to red in the samples table.
LOWER_IS_BETTER_SCORES = {"wer", "cer"}

CSS = """
:root { --ink:#1f2328; --muted:#656d76; --line:#d0d7de; --soft:#f6f8fa; --good:#1a7f37;
        --bad:#cf222e; --accent:#0969da; }
* { box-sizing: border-box; }
body { margin:0; background:#eef1f4; color:var(--ink);
       font:14px/1.45 "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; }
main { max-width:1180px; margin:0 auto; padding:24px 28px 48px; }
header.page { background:#24292f; color:#fff; padding:22px 28px; }
header.page h1 { font-size:24px; max-width:1124px; margin:0 auto; }
header.page p { margin:4px auto 0; color:#c9d1d9; max-width:1124px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:18px 22px;
          margin:18px 0; }
h2 { margin:0 0 6px; font-size:19px; }
h3 { margin:18px 0 8px; font-size:15px; color:#3a4048; }
a { color:var(--accent); text-decoration:none; }
code { font:12px "DejaVu Sans Mono", monospace; background:var(--soft); padding:1px 5px;
       border-radius:4px; border:1px solid #e4e8ec; }
.tag { display:inline-block; font-size:12px; font-weight:normal; color:#3a4048;
       background:#ddf4ff; border:1px solid #b6e3ff; border-radius:10px; padding:0 8px;
       vertical-align:middle; margin-left:6px; }
.meta { color:var(--muted); margin:4px 0 10px; }
.meta span { margin-right:14px; white-space:nowrap; }
table { border-collapse:collapse; margin:6px 0; }
.scroll { overflow-x:auto; }
table.grid th, table.grid td { border-bottom:1px solid var(--line); padding:5px 9px;
                              text-align:left; vertical-align:middle; }
table.grid thead th { background:var(--soft); font-size:12px; text-transform:uppercase;
                      letter-spacing:.03em; color:#3a4048; border-bottom:2px solid var(--line); }
table.grid thead th, .nowrap { white-space:nowrap; }
table.grid tbody tr:nth-child(even) { background:#fafbfc; }
table.wide { width:100%; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums;
                 font-family:"DejaVu Sans Mono", monospace; white-space:nowrap; }
td.arrow { text-align:center; color:var(--muted); }
tr.headline td { font-weight:bold; }
.better { color:var(--good); }
.worse { color:var(--bad); }
.baseline-name { display:block; font-size:11px; color:var(--muted); font-family:inherit; }
.settings { display:flex; flex-wrap:wrap; gap:6px; margin:4px 0; }
.kv { background:var(--soft); border:1px solid #e4e8ec; border-radius:4px; padding:1px 7px;
      font-size:12px; max-width:100%; overflow-wrap:anywhere; }
.kv b { color:#3a4048; font-weight:600; margin-right:4px; }
img.thumb { width:64px; height:64px; object-fit:contain; background:#fff;
            border:1px solid var(--line); border-radius:4px; display:block; }
img.thumb.query { width:96px; height:96px; }
img.pixelated { image-rendering:pixelated; }
table.confusion { font-size:11px; }
table.confusion th { padding:3px 6px; color:#3a4048; background:var(--soft);
                     border:1px solid #fff; font-weight:600; }
table.confusion td { width:34px; height:26px; text-align:center; border:1px solid #fff;
                     font-variant-numeric:tabular-nums; }
table.confusion th.corner { font-weight:normal; color:var(--muted); }
.axis { color:var(--muted); font-size:12px; margin:2px 0; }
.rx { display:flex; gap:16px; align-items:flex-start; padding:10px 0;
      border-bottom:1px solid var(--line); }
.rx:last-child { border-bottom:none; }
.rx .query { flex:0 0 170px; }
.rx .label { font-size:11px; text-transform:uppercase; color:var(--muted); margin-bottom:4px; }
.hits { display:flex; flex-wrap:wrap; gap:8px; }
.hit { margin:0; width:150px; border:2px solid var(--line); border-radius:6px; padding:5px;
       background:#fff; position:relative; }
.hit.positive { border-color:var(--good); background:#f0fff4; }
.hit .rank { font-size:11px; color:var(--muted); }
.hit .mark { font-size:11px; color:var(--good); font-weight:bold; float:right; }
.hit img.thumb { margin:2px auto; }
.caption { font-size:12.5px; overflow-wrap:anywhere; }
.audio { font-size:12px; color:#3a4048; }
.audio::before { content:"audio "; font-size:10px; text-transform:uppercase; color:#fff;
                 background:#8250df; border-radius:3px; padding:0 4px; margin-right:4px; }
table.samples td, table.utterances td { font-size:13px; overflow-wrap:anywhere; }
table.samples ul { margin:0; padding-left:16px; }
tr.exact td.prediction { color:var(--good); font-weight:600; }
.badge { display:inline-block; font-size:10px; font-weight:bold; color:#fff; background:var(--good);
         border-radius:3px; padding:0 5px; margin-left:6px; vertical-align:middle; }
.score { display:inline-block; border-radius:4px; padding:0 6px; margin:1px 0; white-space:nowrap;
         font-family:"DejaVu Sans Mono", monospace; font-size:12px; }
.muted { color:var(--muted); }
footer { color:var(--muted); font-size:12px; text-align:center; margin-top:24px; }
"""


def text(value: Any) -> str:
    """`value` as escaped HTML text (quotes too, so it is also safe inside an attribute).

    Args:
        value: anything; rendered with str().
    """
    return html.escape(str(value), quote=True)


def thumbnail(data: bytes, alt: str, *, query: bool = False) -> str:
    """An inline <img> of encoded image bytes (PNG, or JPEG by its signature), at the fixed
    thumbnail size.

    Args:
        data: the encoded image.
        alt: the alternative text (escaped here).
        query: show it larger, as a retrieval query.
    """
    data = bytes(data)
    mime = "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"
    width = _png_width(data)
    classes = ["thumb"] + (["query"] if query else []) + (
        ["pixelated"] if width is not None and width < PIXELATED_BELOW else [])
    uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return f'<img class="{" ".join(classes)}" src="{uri}" alt="{text(alt)}">'


def _png_width(data: bytes) -> int | None:
    # the IHDR chunk follows the 8-byte signature: length, "IHDR", width, height (big-endian)
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">I", data[16:20])[0]


def media(item: dict, *, query: bool = False) -> str:
    """An image, an audio clip's label or a text, whichever the item holds (in that order).

    Args:
        item: a retrieval query or hit: {"image_png": bytes} | {"audio": str} | {"text": str}.
        query: the item is a query (larger thumbnail).
    """
    if item.get("image_png"):
        return thumbnail(item["image_png"], item.get("text") or "image", query=query)
    if item.get("audio") is not None:
        return f'<div class="audio">{text(item["audio"])}</div>'
    return f'<div class="caption">{text(item.get("text", ""))}</div>'


def confusion_html(confusion: dict) -> str:
    """A confusion matrix as a heat-coloured table: rows the true class, columns the predicted
    one; a cell's colour is its share of the row (green on the diagonal, red off it), so classes
    of different sizes read alike.

    Args:
        confusion: {"labels": [C names], "matrix": C x C counts}.
    """
    labels, matrix = list(confusion["labels"]), confusion["matrix"]
    if len(matrix) != len(labels) or any(len(row) != len(labels) for row in matrix):
        raise ValueError(f"a confusion matrix over {len(labels)} labels must be "
                         f"{len(labels)} x {len(labels)}; got rows of {[len(r) for r in matrix]}")
    head = "".join(f'<th scope="col">{text(label)}</th>' for label in labels)
    rows = []
    for i, (label, row) in enumerate(zip(labels, matrix)):
        total = sum(row)
        cells = "".join(_confusion_cell(labels[i], labels[j], count, total, diagonal=i == j)
                        for j, count in enumerate(row))
        rows.append(f'<tr><th scope="row">{text(label)}</th>{cells}</tr>')
    return ('<div class="axis">rows: true class &middot; columns: predicted class &middot; '
            'colour: share of the row</div>'
            # many classes (CIFAR-100) scroll sideways rather than widen the page
            f'<div class="scroll"><table class="confusion"><thead><tr>'
            f'<th class="corner">true \\ pred</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _confusion_cell(true: str, predicted: str, count: int, total: int, *, diagonal: bool) -> str:
    share = count / total if total else 0.0
    if count == 0:
        style = "background:#f6f8fa;color:#b1b8c0"
    else:
        hue = 140 if diagonal else 0
        # lightness from 95% (a stray count) down to 38% (the whole row)
        lightness = 95 - 57 * share
        ink = "#fff" if lightness < 60 else "#1f2328"
        style = f"background:hsl({hue},62%,{lightness:.0f}%);color:{ink}"
    title = f"true {true}, predicted {predicted}: {count} ({share:.0%} of the row)"
    return f'<td style="{style}" title="{text(title)}">{int(count)}</td>'


def retrieval_html(examples: list[dict]) -> str:
    """Retrieval examples: each query, then its top hits in rank order, positives marked.

    Args:
        examples: [{"direction": str, "query": item, "hits": [item + {"positive": bool}]}], an
            item as `media` takes it.
    """
    blocks = []
    for example in examples:
        hits = []
        for rank, hit in enumerate(example.get("hits", []), 1):
            positive = bool(hit.get("positive"))
            mark = '<span class="mark">&#10003; match</span>' if positive else ""
            hits.append(f'<figure class="hit{" positive" if positive else ""}">'
                        f'<div class="rank">#{rank}{mark}</div>{media(hit)}</figure>')
        direction = str(example.get("direction", "")).replace("_", " ")
        blocks.append(f'<div class="rx"><div class="query"><div class="label">{text(direction)}'
                      f' &middot; query</div>{media(example.get("query", {}), query=True)}</div>'
                      f'<div class="hits">{"".join(hits)}</div></div>')
    return f'<div class="retrieval">{"".join(blocks)}</div>'


def samples_html(samples: list[dict]) -> str:
    """Generated answers, captions or transcripts beside their inputs and references; a
    prediction equal to a reference (case and surrounding space aside) is marked exact, and
    WER/CER are coloured from green (0) to red (1 or more).

    Args:
        samples: [{"id", "image_png", "audio", "prompt", "prediction", "references", "scores"}],
            every key optional.
    """
    has = {key: any(s.get(key) not in (None, "", [], {}) for s in samples)
           for key in ("image_png", "audio", "prompt", "references", "scores")}
    columns = (["#", "Item"] + (["Image"] if has["image_png"] else [])
               + (["Audio"] if has["audio"] else []) + (["Prompt"] if has["prompt"] else [])
               + ["Prediction"] + (["References"] if has["references"] else [])
               + (["Scores"] if has["scores"] else []))
    rows = []
    for number, sample in enumerate(samples, 1):
        references = [str(r) for r in sample.get("references") or []]
        exact = _normalise(sample.get("prediction", "")) in {_normalise(r) for r in references}
        badge = '<span class="badge">exact</span>' if exact else ""
        cells = [f'<td class="num">{number}</td>',
                 f'<td><code>{text(sample.get("id", ""))}</code></td>']
        if has["image_png"]:
            cells.append("<td>" + (thumbnail(sample["image_png"], sample.get("id") or "input")
                                   if sample.get("image_png") else "") + "</td>")
        if has["audio"]:
            audio = sample.get("audio")
            cells.append(f'<td>{"" if audio is None else media({"audio": audio})}</td>')
        if has["prompt"]:
            cells.append(f'<td>{text(sample.get("prompt") or "")}</td>')
        cells.append(f'<td class="prediction">{text(sample.get("prediction", ""))}{badge}</td>')
        if has["references"]:
            cells.append("<td><ul>" + "".join(f"<li>{text(r)}</li>" for r in references)
                         + "</ul></td>")
        if has["scores"]:
            cells.append("<td>" + "<br>".join(_score(name, value) for name, value
                                              in (sample.get("scores") or {}).items()) + "</td>")
        row_class = ' class="exact"' if exact else ""
        rows.append(f'<tr{row_class}>{"".join(cells)}</tr>')
    head = "".join(f"<th>{text(c)}</th>" for c in columns)
    return (f'<table class="grid wide samples"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def utterances_html(utterances: list[dict]) -> str:
    """Every utterance of an ASR suite with its WER (coloured as in `samples_html`), its transcript
    and its reference, in the suite's item order; the mean of these is not the corpus WER (that one
    weighs each utterance by its reference words).

    Args:
        utterances: [{"id", "wer", "prediction", "reference"}].
    """
    rows = "".join(f'<tr><td class="num">{number}</td><td><code>{text(u.get("id", ""))}</code></td>'
                   f'<td>{_score("wer", u.get("wer"))}</td><td class="prediction">{text(u.get("prediction", ""))}'
                   f'</td><td>{text(u.get("reference", ""))}</td></tr>'
                   for number, u in enumerate(utterances, 1))
    head = "".join(f"<th>{c}</th>" for c in ("#", "Utterance", "WER", "Transcript", "Reference"))
    return (f'<table class="grid wide utterances"><thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table>")


def _normalise(answer: Any) -> str:
    return " ".join(str(answer).lower().split())


def _score(name: str, value: Any) -> str:
    style = ""
    if name in LOWER_IS_BETTER_SCORES and isinstance(value, numbers.Real):
        # 0 -> green (hue 130), 1 or more -> red (hue 0)
        hue = 130 * (1 - min(max(float(value), 0.0), 1.0))
        style = f' style="background:hsl({hue:.0f},70%,88%)"'
    return f'<span class="score"{style}>{text(name)} {text(format_value(value))}</span>'


def settings_html(settings: dict) -> str:
    """A suite's settings as compact key/value chips; nested dicts flatten to dotted keys.

    Args:
        settings: the free-form settings dict.
    """
    chips = "".join(f'<span class="kv"><b>{text(k)}</b>{text(v)}</span>'
                    for k, v in _flatten(settings or {}))
    return f'<div class="settings">{chips or "<span class=muted>none</span>"}</div>'


def _flatten(settings: dict, prefix: str = "") -> list[tuple[str, str]]:
    items = []
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items += _flatten(value, name + ".")
        elif isinstance(value, float):
            items.append((name, format(value, "g")))
        elif isinstance(value, (list, tuple)):
            items.append((name, ", ".join(map(str, value)) or "[]"))
        else:
            items.append((name, str(value)))
    return items
