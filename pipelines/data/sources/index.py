"""JSONL / CSV index files with media paths relative to the index (BEiT-3 / ONE-PEACE style).

Each row names a text field, an image path, an audio path, a label (any may be
absent): an integer, or a class name (see `pipelines.data.sources.parse_label`).
Paths resolve against the index file's directory; an absolute path or one
with `..` is rejected (unsafe_path), a path to no file is missing_member.
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Iterator, TYPE_CHECKING

from pipelines.data.records import raw_record, reject_record
from pipelines.data.sources import label_lookup, list_files, parse_label, unsafe_relpath

if TYPE_CHECKING:  # config classes for annotations only: pipelines.data does not import the stages
    from pipelines.stages.corpus import SourceConfig


def plan(src: SourceConfig) -> list[dict]:
    return [{"files": [f]} for f in list_files(src)]


def label_values(src: SourceConfig) -> Iterator:
    """The raw label of each record `read` yields (None where a row has none or is unreadable), in
    order, up to the source's `limit`; media files are not opened."""
    count = 0
    for path in list_files(src):
        for _, row, _ in _rows(path, src.format):
            if src.limit and count >= src.limit:
                return
            count += 1
            yield None if row is None else row.get(src.label_field)


def _rows(path: str, fmt: str) -> Iterator[tuple[int, dict | None, str]]:
    """(1-based row number, row or None, error) per data row of an index file."""
    with open(path, "rb") as f:
        raw = f.read()
    if fmt == "csv":
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            yield 0, None, f"index is not UTF-8: {e}"
            return
        for i, row in enumerate(csv.DictReader(io.StringIO(text, newline="")), start=1):
            yield i, row, ""
        return
    for i, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            yield i, None, f"bad json: {e}"
            continue
        yield i, row if isinstance(row, dict) else None, "" if isinstance(row, dict) else "not an object"


def read(src: SourceConfig, unit: dict) -> Iterator[dict]:
    path = unit["files"][0]
    base = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    names = label_lookup(src)
    for i, row, err in _rows(path, src.format):
        key = f"{name}:{i}"
        if row is None:
            yield reject_record(src.name, key, "read_error", err[:300])
            continue
        if src.id_field and row.get(src.id_field) not in (None, ""):
            key = f"{name}:{row[src.id_field]}"
        yield _record(src, key, base, row, names)


def _load(src, key, base, rel, what) -> tuple[bytes | None, str, dict | None]:
    """Read a referenced media file -> (bytes, ext, reject or None)."""
    if rel in (None, ""):
        return None, "", None
    rel = str(rel)
    if unsafe_relpath(rel):
        return None, "", reject_record(src.name, key, "unsafe_path", f"{what} path {rel!r}")
    full = os.path.join(base, rel)
    if not os.path.isfile(full):
        return None, "", reject_record(src.name, key, "missing_member", f"{what} file {rel!r}")
    with open(full, "rb") as f:
        return f.read(), rel.rsplit(".", 1)[-1].lower() if "." in rel else "", None


def _record(src, key, base, row, names: dict[str, int]) -> dict:
    image, image_ext, bad = _load(src, key, base, row.get(src.image_field), "image")
    if bad:
        return bad
    audio, audio_ext, bad = _load(src, key, base, row.get(src.audio_field), "audio")
    if bad:
        return bad
    text = row.get(src.text_field)
    label, why = parse_label(row.get(src.label_field), names)
    if why:
        return reject_record(src.name, key, "read_error", why[:300])
    if text == "" and src.format == "csv":
        text = None  # CSV cannot tell an empty cell from an absent one: absent
    return raw_record(src.name, key, text=None if text is None else str(text), image=image,
                      image_ext=image_ext, audio=audio, audio_ext=audio_ext, label=label)
