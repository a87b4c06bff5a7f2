"""Raw record -> accepted corpus row or reject: the per-sample function of the corpus stage.

`normalize_record` is plain Python on one record, called by the corpus stage's Ray tasks
(`pipelines.data.ingest`) and by tests alike; accepted rows have reason == "".
"""

from __future__ import annotations

import hashlib
from typing import Any, TYPE_CHECKING

from pipelines.data.text import Rejected, normalize_text

if TYPE_CHECKING:  # config classes for annotations only: pipelines.data does not import the stages
    from pipelines.stages.corpus import CorpusConfig


def content_hash(text: str | None, image: bytes | None, audio: bytes | None,
                 label: int | None) -> str:
    """sha256 over the normalised content; the tag bytes keep fields from aliasing."""
    h = hashlib.sha256()
    for tag, value in ((b"T", text.encode() if text is not None else None), (b"I", image),
                       (b"A", audio), (b"L", None if label is None else str(label).encode())):
        if value is not None:
            h.update(tag + len(value).to_bytes(8, "little") + value)
    return h.hexdigest()


def _result(rec: dict, **kw: Any) -> dict[str, Any]:
    row = {"sample_id": f"{rec['source']}/{rec['key']}", "source": rec["source"],
           "key": rec["key"], "modalities": [], "text": None, "image": None, "audio": None,
           "label": rec.get("label"), "content_hash": "", "reason": "", "detail": ""}
    row.update(kw)
    return row


def normalize_record(rec: dict[str, Any], cfg: CorpusConfig,
                     require: tuple[str, ...] = ()) -> dict[str, Any]:
    """One raw record (`records.raw_record`) -> one result row (`tables.RESULT_SCHEMA`)."""
    if rec.get("reason"):
        return _result(rec, reason=rec["reason"], detail=rec.get("detail") or "")
    from pipelines.data.audio import normalize_audio
    from pipelines.data.image import normalize_image

    try:
        text = normalize_text(rec.get("text"), cfg.text)
        image = normalize_image(rec.get("image"), cfg.image, rec.get("image_ext") or "")
        audio = normalize_audio(rec.get("audio"), cfg.audio, rec.get("audio_ext") or "")
    except Rejected as r:
        return _result(rec, reason=r.reason, detail=r.detail)
    present = {"text": text, "image": image, "audio": audio}
    modalities = [m for m in ("text", "image", "audio") if present[m] is not None]
    missing = [m for m in require if present.get(m) is None]
    if missing:
        return _result(rec, reason="missing_member", detail=f"no {', '.join(missing)}")
    if not modalities:
        return _result(rec, reason="empty_sample", detail="no text, image or audio")
    label = rec.get("label")
    return _result(rec, modalities=modalities, text=text, image=image, audio=audio, label=label,
                   content_hash=content_hash(text, image, audio, label))
