"""Text decode + normalise: UTF-8, NFC, trimmed, length-bounded."""

from __future__ import annotations

import re
import unicodedata
from typing import Optional, TYPE_CHECKING

if TYPE_CHECKING:  # config classes for annotations only: pipelines.data does not import the stages
    from pipelines.stages.corpus import TextLimits


class Rejected(Exception):
    """A sample failed validation; `reason` is one of schema.REJECT_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def error_detail(e: Exception, limit: int = 200) -> str:
    """`Type: message` of a decoder's exception for a reject's detail, without the object reprs some
    libraries put in it (`<_io.BytesIO object at 0x7f...>`): a detail is part of the stage's output, and
    the same input must give the same bytes."""
    message = re.sub(r"<([\w.]+) object at 0x[0-9a-fA-F]+>", r"<\1>", str(e))
    return f"{type(e).__name__}: {message[:limit]}"


def normalize_text(raw: Optional[bytes], limits: TextLimits) -> Optional[str]:
    """bytes -> NFC, trimmed str; None when absent. Raises Rejected."""
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Rejected("non_utf8_text", f"byte {e.start}: {e.reason}") from None
    # NFC so that the same words always give the same bytes (and the same hash / tokens);
    # NUL and other C0 controls except tab/newline carry nothing and break some tools.
    text = unicodedata.normalize("NFC", text)
    text = "".join(ch for ch in text if ch in "\t\n" or ch >= " " or ch == "\r").strip()
    if not text:
        raise Rejected("empty_text", "nothing left after trimming")
    if len(text) < limits.min_chars:
        raise Rejected("too_short", f"{len(text)} chars < min_chars {limits.min_chars}")
    if len(text) > limits.max_chars:
        raise Rejected("too_long", f"{len(text)} chars > max_chars {limits.max_chars}")
    return text
