"""webdataset tar shards (img2dataset / open_clip layout).

Members `<key>.<ext>` of one sample are adjacent in the tar; the key is the member
path up to the first dot of its base name (webdataset's own convention). Checked
here, because Ray's and webdataset's readers would silently yield half samples:
- a key whose members are not adjacent            -> split_sample
- a member path that is absolute or contains `..` -> unsafe_path
- a media extension omniway does not read          -> unsupported_format
- the tar itself unreadable                        -> read_error (one reject for the file)
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from typing import Iterator

from pipelines.data.config import SourceConfig
from pipelines.data.records import raw_record, reject_record
from pipelines.data.sources import list_files, unsafe_relpath

IMAGE_EXTS = {"jpg", "jpeg", "png", "webp"}
AUDIO_EXTS = {"wav", "flac", "ogg"}
UNSUPPORTED_MEDIA = {"gif", "bmp", "tif", "tiff", "avif", "heic", "mp3", "m4a", "aac", "opus",
                     "mp4", "webm", "mkv", "avi"}
_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")


def plan(src: SourceConfig) -> list[dict]:
    return [{"files": [f]} for f in list_files(src)]


def split_key(name: str) -> tuple[str, str]:
    """'dir/000123.seg.png' -> ('dir/000123', 'seg.png'); no dot -> (name, '')."""
    m = _KEY_RE.match(name)
    return (m.group(1), m.group(2).lower()) if m else (name, "")


def read(src: SourceConfig, unit: dict) -> Iterator[dict]:
    path = unit["files"][0]
    shard = os.path.basename(path)
    try:
        with tarfile.open(path, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            yield from _samples(src, shard, tar, members)
    except (tarfile.TarError, OSError, EOFError) as e:
        yield reject_record(src.name, shard, "read_error", f"{type(e).__name__}: {e}"[:300])


def _samples(src, shard, tar, members) -> Iterator[dict]:
    # Group adjacent members by key, remembering keys that come back later.
    groups: list[tuple[str, list]] = []
    seen: set[str] = set()
    split: set[str] = set()
    for m in members:
        key, _ = split_key(m.name)
        if groups and groups[-1][0] == key:
            groups[-1][1].append(m)
            continue
        if key in seen:
            split.add(key)
        seen.add(key)
        groups.append((key, [m]))
    reported: set[str] = set()
    for key, group in groups:
        sample_key = f"{shard}/{key}"
        if key in split:
            if key not in reported:  # one reject per key, however many fragments
                reported.add(key)
                yield reject_record(src.name, sample_key, "split_sample",
                                    "members of this key are not adjacent in the tar")
            continue
        bad = [m.name for m in group if unsafe_relpath(m.name)]
        if bad:
            yield reject_record(src.name, sample_key, "unsafe_path", ", ".join(bad)[:300])
            continue
        yield _assemble(src, sample_key, tar, group)


def _assemble(src, sample_key, tar, group) -> dict:
    fields: dict = {}
    for m in group:
        ext = split_key(m.name)[1]
        last = ext.rsplit(".", 1)[-1]
        if last in UNSUPPORTED_MEDIA:
            return reject_record(src.name, sample_key, "unsupported_format", f"member {m.name}")
        data = tar.extractfile(m).read()
        if last in IMAGE_EXTS:
            fields["image"], fields["image_ext"] = data, last
        elif last in AUDIO_EXTS:
            fields["audio"], fields["audio_ext"] = data, last
        elif last == "txt":
            fields["text"] = data
        elif last == "cls":
            try:
                fields["label"] = int(data.strip())
            except ValueError:
                return reject_record(src.name, sample_key, "read_error", f"bad .cls {data[:40]!r}")
        elif last == "json":
            try:
                meta = json.loads(data)
            except (ValueError, UnicodeDecodeError) as e:
                return reject_record(src.name, sample_key, "read_error", f"bad json: {e}"[:300])
            if isinstance(meta, dict):
                if meta.get(src.text_field) is not None:
                    fields.setdefault("json_text", str(meta[src.text_field]).encode())
                if isinstance(meta.get(src.label_field), int):
                    fields.setdefault("label", meta[src.label_field])
    if "text" not in fields and "json_text" in fields:
        fields["text"] = fields["json_text"]
    fields.pop("json_text", None)
    return raw_record(src.name, sample_key, **fields)
