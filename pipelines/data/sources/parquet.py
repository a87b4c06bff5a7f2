"""Parquet files with binary media columns or Hugging Face `{bytes, path}` structs.

Text from a string (or binary) column, image / audio from a binary column or a
struct with `bytes` and `path` (the extension comes from `path`), label from an
integer column or a string column of class names (see `pipelines.data.sources.parse_label`).
Key: the id column when configured, else `<file>:<row>`.
"""

from __future__ import annotations

import os
from typing import Iterator, TYPE_CHECKING

from pipelines.data.records import raw_record, reject_record
from pipelines.data.sources import label_lookup, list_files, parse_label

if TYPE_CHECKING:  # config classes for annotations only: pipelines.data does not import the stages
    from pipelines.stages.corpus import SourceConfig


def plan(src: SourceConfig) -> list[dict]:
    return [{"files": [f]} for f in list_files(src)]


def label_values(src: SourceConfig) -> Iterator:
    """The raw label of each record `read` yields, in order, up to the source's `limit`: the label
    column alone is read (None for a file's one reject when it is unreadable, or for no such column)."""
    import pyarrow.parquet as pq

    count = 0
    for path in list_files(src):
        try:
            pf = pq.ParquetFile(path)
        except Exception:  # noqa: BLE001 - `read` turns the same error into one reject
            values = [None]
        else:
            if src.label_field in pf.schema_arrow.names:
                values = pf.read(columns=[src.label_field]).column(0).to_pylist()
            else:
                values = [None] * pf.metadata.num_rows
        for value in values:
            if src.limit and count >= src.limit:
                return
            count += 1
            yield value


def _media(value) -> tuple[bytes | None, str]:
    if value is None:
        return None, ""
    if isinstance(value, dict):  # HF Image()/Audio() feature: {"bytes": ..., "path": ...}
        path = value.get("path") or ""
        return value.get("bytes"), path.rsplit(".", 1)[-1].lower() if "." in path else ""
    return bytes(value), ""


def read(src: SourceConfig, unit: dict) -> Iterator[dict]:
    import pyarrow.parquet as pq

    path = unit["files"][0]
    name = os.path.basename(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - any footer / format error
        yield reject_record(src.name, name, "read_error", f"{type(e).__name__}: {e}"[:300])
        return
    wanted = [c for c in (src.text_field, src.image_field, src.audio_field, src.label_field,
                          src.id_field) if c and c in pf.schema_arrow.names]
    row = 0
    names = label_lookup(src)
    for batch in pf.iter_batches(batch_size=256, columns=wanted):
        for rec in batch.to_pylist():
            key = f"{name}:{rec[src.id_field]}" if src.id_field in rec else f"{name}:{row}"
            row += 1
            image, image_ext = _media(rec.get(src.image_field))
            audio, audio_ext = _media(rec.get(src.audio_field))
            text = rec.get(src.text_field)
            label = rec.get(src.label_field)
            if label is not None and not isinstance(label, int):
                label, why = parse_label(label, names) if isinstance(label, str) else (
                    None, f"label {label!r} is not an int")
                if why:
                    yield reject_record(src.name, key, "read_error", why[:300])
                    continue
            yield raw_record(src.name, key, text=text, image=image, image_ext=image_ext,
                             audio=audio, audio_ext=audio_ext, label=label)
