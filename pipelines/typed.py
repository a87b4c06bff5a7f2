"""Typed configs on the pipeline side: the strict loader (``model.typed_config``, re-exported here) and
what the runner and the CLI add to it: flattened params for MLflow, field tables for ``omniway stages``.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

from model.typed_config import ConfigError, convert, from_dict, merge, to_dict, type_name

__all__ = ["ConfigError", "convert", "describe_fields", "field_docs", "flatten", "from_dict", "merge",
           "to_dict"]


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}` (lists keep their index)."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(data, list) and data and any(isinstance(v, (dict, list)) for v in data):
        for i, v in enumerate(data):
            out.update(flatten(v, f"{prefix}.{i}"))
    else:
        out[prefix] = data
    return out


_ENTRY = re.compile(r"^(?P<names>[A-Za-z_][\w ,/]*?):\s*(?P<doc>.*)$")


def field_docs(cls: type, full: bool = False) -> dict[str, str]:
    """Field name -> the first line of its entry in the class docstring's ``Args:`` section (``full``: the
    whole entry, its continuation lines joined by spaces).

    An entry may document several fields at once (``text / image / audio: per-modality limits``)."""
    doc = cls.__doc__ or ""
    lines = doc.expandtabs().splitlines()
    out: dict[str, str] = {}
    in_args, indent, current = False, None, []
    for line in lines:
        stripped = line.strip()
        if not in_args:
            if stripped.startswith("Args:"):
                in_args = True
                rest = stripped[len("Args:"):].strip()
                if rest:  # "Args: name: text" on the docstring's first line
                    m = _ENTRY.match(rest)
                    if m:
                        current = re.split(r"[ ,/]+", m["names"].strip())
                        for name in current:
                            out[name] = m["doc"].strip()
                        indent = None
            continue
        if not stripped:
            continue
        level = len(line) - len(line.lstrip())
        if indent is None:
            indent = level
        if level < indent:  # the section ended (Raises:, prose...)
            break
        if level > indent:  # a continuation line
            if full:
                for name in current:
                    out[name] = f"{out[name]} {stripped}".strip()
            continue
        m = _ENTRY.match(stripped)
        if m:
            current = re.split(r"[ ,/]+", m["names"].strip())
            for name in current:
                out[name] = m["doc"].strip()
    return out


def describe_fields(cls: type, full: bool = False) -> list[tuple[str, str, str, str]]:
    """(name, type, default, first line of its ``Args:`` entry; ``full``: the whole entry) rows for
    ``omniway stages``."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls, full)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(to_dict(f.default_factory()))
        else:
            default = "(required)"
        rows.append((f.name, type_name(hints[f.name]), default, docs.get(f.name, "")))
    return rows
