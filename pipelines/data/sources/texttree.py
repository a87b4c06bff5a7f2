"""Plain text trees: `.txt` / `.rst` files, one document per file, paragraph or line.

Keys are paths relative to the tree root (plus `#<n>` for paragraphs / lines).
Blank lines between units are separators, not records; everything else is read
as bytes so that non-UTF-8 files are quarantined, not skipped.
"""

from __future__ import annotations

import os
import re
from typing import Iterator, TYPE_CHECKING

from pipelines.data.records import raw_record, reject_record
from pipelines.data.sources import chunk, list_files

if TYPE_CHECKING:  # config classes for annotations only: pipelines.data does not import the stages
    from pipelines.stages.corpus import SourceConfig

_PARAGRAPH = re.compile(rb"(?:\r?\n)[ \t]*(?:\r?\n)+")


def plan(src: SourceConfig) -> list[dict]:
    return [{"files": files} for files in chunk(list_files(src), src.files_per_unit)]


def read(src: SourceConfig, unit: dict) -> Iterator[dict]:
    root = src.path if os.path.isdir(src.path) else os.path.dirname(src.path)
    for path in unit["files"]:
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            yield reject_record(src.name, rel, "read_error", str(e)[:300])
            continue
        if src.text_unit == "file":
            yield raw_record(src.name, rel, text=data)
            continue
        parts = _PARAGRAPH.split(data) if src.text_unit == "paragraph" else data.splitlines()
        n = 0
        for part in parts:
            if not part.strip():
                continue  # separators
            n += 1
            yield raw_record(src.name, f"{rel}#{n}", text=part)
