"""The raw record every source reader yields, before any decoding.

A reader only finds bytes and says where they came from; decoding and
validation happen later in the corpus stage's Ray tasks (`ingest.ingest_unit` ->
`normalize.normalize_record`), so readers stay cheap
and every failure ends in the same rejects table. A reader that already knows
a record is bad (unsafe tar path, split webdataset sample, missing file) sets
`reason`/`detail` and the normaliser passes it through as a reject.
"""

from __future__ import annotations

from typing import Any, Optional

def raw_record(source: str, key: str, *, text: Optional[bytes] = None,
               image: Optional[bytes] = None, image_ext: str = "",
               audio: Optional[bytes] = None, audio_ext: str = "",
               label: Optional[int] = None, reason: str = "", detail: str = "") -> dict[str, Any]:
    """One raw record. Text stays bytes so that non-UTF-8 input is caught and reported."""
    if isinstance(text, str):
        text = text.encode("utf-8")
    return {"source": source, "key": key, "text": text, "image": image, "image_ext": image_ext,
            "audio": audio, "audio_ext": audio_ext,
            "label": None if label is None else int(label), "reason": reason, "detail": detail}


def reject_record(source: str, key: str, reason: str, detail: str = "") -> dict[str, Any]:
    return raw_record(source, key, reason=reason, detail=detail)
