"""The evaluate stage's console tables (markdown, as lmms-eval prints them) and the number
formatting that the HTML report (pipelines/evaluation/report.py) shares with them.

A result is the dict one suite produces (its contract is in report.py's `render_report`); only
`suite`, `task`, `data`, `metrics`, `baselines` and `lower_is_better` are read here.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

MARKDOWN_COLUMNS = ("Suite", "Task", "Data", "n", "Metric", "↑/↓", "Value", "Baseline")


def format_value(value: Any) -> str:
    """A metric value as the tables show it: floats to 4 decimals, integers as they are.

    Args:
        value: a number (Python or numpy), None (shown blank) or anything else (shown by str).
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def format_difference(value: float | None) -> str:
    """A signed difference to 4 decimals ("+0.0123", "-0.5000"); blank for None.

    Args:
        value: the difference, or None where one side is missing.
    """
    if value is None:
        return ""
    if math.isnan(value):
        return "nan"
    return f"{value:+.4f}"


def direction_arrow(result: dict, metric: str) -> str:
    """"↓" for a metric where lower is better (wer, mean_rank...), "↑" otherwise.

    Args:
        result: one suite's result (reads its `lower_is_better` list).
        metric: the metric's name.
    """
    return "↓" if metric in (result.get("lower_is_better") or ()) else "↑"


def difference(value: Any, other: Any) -> float | None:
    """`value - other` as a float, or None when either is missing or not a number.

    Args:
        value: the minuend (a metric value).
        other: the subtrahend (a baseline, or the other run's value).
    """
    if not _is_number(value) or not _is_number(other):
        return None
    return float(value) - float(other)


def beats(result: dict, metric: str, value: Any, other: Any) -> bool | None:
    """Whether `value` is better than `other` in the metric's direction; None when either is
    missing and for a tie (neither better).

    Args:
        result: the suite's result (for the metric's direction).
        metric: the metric's name.
        value: the value judged.
        other: what it is judged against (the baseline).
    """
    diff = difference(value, other)
    if diff is None or diff == 0 or math.isnan(diff):
        return None
    return diff < 0 if direction_arrow(result, metric) == "↓" else diff > 0


def data_label(data: dict) -> str:
    """The data a suite scored, as one short cell: "shards/17a90de9b45cbb6e/val".

    Args:
        data: the result's `data` dict (stage, key, split; missing parts are left out).
    """
    return "/".join(str(data[k]) for k in ("stage", "key", "split") if data.get(k) not in (None, ""))


def markdown_table(results: list[dict]) -> str:
    """The console table of a run's results, one row per (suite, metric); a suite's name, task,
    data and n are written on its first row only (as lmms-eval does) so the suites stand apart.

    Args:
        results: the suites' results, in the order to print them.
    """
    rows = []
    for result in results:
        data = result.get("data") or {}
        first = [result.get("suite", ""), result.get("task", ""), data_label(data),
                 format_value(data.get("n"))]
        baselines = result.get("baselines") or {}
        for i, (metric, value) in enumerate((result.get("metrics") or {}).items()):
            rows.append((first if i == 0 else [""] * 4)
                        + [metric, direction_arrow(result, metric), format_value(value),
                           format_value(baselines.get(metric))])
    return _markdown(MARKDOWN_COLUMNS, rows, numeric={3, 6, 7})


def compare_table(a: list[dict], b: list[dict], a_name: str, b_name: str) -> str:
    """Two runs' results side by side, one row per (suite, metric) with the difference b − a;
    a row that only one run has shows a blank for the other and no difference. Rows follow a's
    order, then the suites and metrics only b has.

    Args:
        a: the first run's results (e.g. the older checkpoint).
        b: the second run's results.
        a_name: the first run's column heading.
        b_name: the second run's column heading.
    """
    a_values, b_values = _values_by_row(a), _values_by_row(b)
    by_suite = {r.get("suite"): r for r in [*b, *a]}  # a's direction wins where they disagree
    keys = list(a_values) + [k for k in b_values if k not in a_values]
    # keep each suite's metrics together even when b adds a metric to a suite a also has
    suite_order = list(dict.fromkeys(suite for suite, _ in keys))
    keys.sort(key=lambda k: suite_order.index(k[0]))
    rows = []
    for suite, metric in keys:
        va, vb = a_values.get((suite, metric)), b_values.get((suite, metric))
        rows.append([suite, metric, direction_arrow(by_suite[suite], metric), format_value(va),
                     format_value(vb), format_difference(difference(vb, va))])
    return _markdown(("Suite", "Metric", "↑/↓", a_name, b_name, f"Δ ({b_name} − {a_name})"), rows,
                     numeric={3, 4, 5})


def _values_by_row(results: list[dict]) -> dict[tuple[str, str], Any]:
    return {(r.get("suite"), metric): value
            for r in results for metric, value in (r.get("metrics") or {}).items()}


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _markdown(columns: tuple[str, ...], rows: list[list[str]], numeric: set[int]) -> str:
    """A markdown table with columns padded to their widest cell, so it reads on a console too;
    the `numeric` columns are right-aligned so their decimals line up."""
    cells = [[_cell(c) for c in columns]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for j, row in enumerate(cells):
        padded = [c.rjust(w) if i in numeric and j > 0 else c.ljust(w)
                  for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("| " + " | ".join(padded) + " |")
        if j == 0:
            lines.append("|" + "|".join(("-" * (w + 1) + ":") if i in numeric else "-" * (w + 2)
                                        for i, w in enumerate(widths)) + "|")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    # a pipe would end the cell early; a newline would end the row
    return str(value).replace("|", "\\|").replace("\n", " ")
