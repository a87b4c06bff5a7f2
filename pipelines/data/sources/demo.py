"""The demo corpora from Debian packages and scikit-learn (the Makefile's DEMO_DEBS, pipelines/configs/demo.yaml).

- tuxpaint: `<stamps>/<category>/.../<name>.png` + `<name>.txt` (first line: English
  caption) + `<name>_desc.ogg` (English spoken caption, 44.1 kHz) where it exists.
- asterisk: `<sounds>/**/<key>.wav` (8 kHz mono) + `key: text` transcript lines; `path`
  may be the voice root or a folder under it (`.../digits`), keys stay `digits/1`.
- digits: sklearn `load_digits()`, 8×8 greyscale at 0..16 rendered as 32×32 PNG
  (nearest, ×4) with the caption `caption_template` and the digit as label.
"""

from __future__ import annotations

import gzip
import io
import os
from typing import Iterator, TYPE_CHECKING

from pipelines.data.records import raw_record
from pipelines.data.sources import chunk, list_files

if TYPE_CHECKING:
    from pipelines.stages.corpus import SourceConfig

DEFAULT_PATHS = {"tuxpaint": "/usr/share/tuxpaint/stamps",
                 "asterisk": "/usr/share/asterisk/sounds/en_US_f_Allison"}


def _root(src: SourceConfig) -> str:
    return src.path or DEFAULT_PATHS[src.format]


def plan(src: SourceConfig) -> list[dict]:
    if src.format == "digits":
        n = 1797 if not src.limit else min(src.limit, 1797)
        return [{"range": r} for r in chunk(list(range(n)), max(src.files_per_unit, 256))]
    ext = ".png" if src.format == "tuxpaint" else ".wav"
    from pipelines.stages.corpus import SourceConfig

    files = list_files(SourceConfig(name=src.name, format=src.format, path=_root(src),
                                    extensions=src.extensions or [ext], max_files=src.max_files))
    if src.limit:
        files = files[:src.limit]  # one record per file: the limit bounds what is read
    return [{"files": f} for f in chunk(files, src.files_per_unit)]


def read(src: SourceConfig, unit: dict) -> Iterator[dict]:
    return {"tuxpaint": _tuxpaint, "asterisk": _asterisk, "digits": _digits}[src.format](src, unit)


def _read(path: str) -> bytes | None:
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return f.read()


def _tuxpaint(src, unit) -> Iterator[dict]:
    root = _root(src)
    for png in unit["files"]:
        stem = png[:-len(".png")]
        key = os.path.relpath(stem, root).replace(os.sep, "/")
        caption = _read(stem + ".txt")
        if caption is not None:
            # first non-empty line is English; the rest are `<lang>.utf8=` translations
            caption = next((ln for ln in caption.splitlines() if ln.strip()), b"")
        yield raw_record(src.name, key, text=caption, image=_read(png), image_ext="png",
                         audio=_read(stem + "_desc.ogg"), audio_ext="ogg")


def _transcripts(path: str) -> dict[str, bytes]:
    raw = _read(path)
    if raw is None:
        return {}
    if path.endswith(".gz"):
        raw = gzip.decompress(raw)
    out = {}
    for line in raw.splitlines():
        if line.startswith(b";") or b":" not in line:
            continue
        key, text = line.split(b":", 1)
        out[key.strip().decode("utf-8", "replace")] = text.strip()
    return out


def _asterisk(src, unit) -> Iterator[dict]:
    root = _root(src)
    transcripts = _transcripts(src.transcripts)
    for wav in unit["files"]:
        key = os.path.relpath(wav, root)[:-len(".wav")].replace(os.sep, "/")
        # Transcript keys are relative to the voice's root ("digits/1"); `path` may point
        # below it (".../digits"), so take the longest path suffix the transcripts know.
        parts = os.path.abspath(wav)[:-len(".wav")].split(os.sep)
        for n in range(len(parts) - 1, 0, -1):
            if "/".join(parts[-n:]) in transcripts:
                key = "/".join(parts[-n:])
                break
        yield raw_record(src.name, key, text=transcripts.get(key), audio=_read(wav),
                         audio_ext="wav")


def _digits(src, unit) -> Iterator[dict]:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in unit["range"]:
        grey = (digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8)  # (8, 8)
        img = Image.fromarray(grey, mode="L").resize((32, 32), Image.NEAREST)
        out = io.BytesIO()
        img.save(out, format="PNG")
        label = int(digits.target[i])
        yield raw_record(src.name, f"{i:05d}", text=src.caption_template.format(label=label),
                         image=out.getvalue(), image_ext="png", label=label)
