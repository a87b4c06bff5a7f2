"""The Arrow table with fixed types of the corpus stage's in-flight result batches.

Fixed schemas matter: a batch where every image is null would otherwise infer
`null` type and fail to concatenate with the next one.
"""

from __future__ import annotations

import pyarrow as pa

RESULT_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("source", pa.string()), ("key", pa.string()),
    ("modalities", pa.list_(pa.string())), ("text", pa.string()), ("image", pa.binary()),
    ("audio", pa.binary()), ("label", pa.int32()), ("content_hash", pa.string()),
    ("reason", pa.string()), ("detail", pa.string()),
])


def results_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)
