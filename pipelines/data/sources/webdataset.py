"""webdataset tar shards (img2dataset / open_clip layout).

Members `<key>.<ext>` of one sample are adjacent in the tar; the key is the member
path up to the first dot of its base name (webdataset's own convention). Checked
here, because Ray's and webdataset's readers would silently yield half samples:
- a key whose members are not adjacent            -> split_sample
- a member path that is absolute or contains `..` -> unsafe_path
- a media extension omniway does not read          -> unsupported_format
- the tar itself unreadable                        -> read_error (one reject for the file)
- a `.cls` that is no integer and none of the source's label_names -> read_error
Labels: `.cls` holds an integer or, where the source configures `label_names`, a class name; a json
member's `label_field` likewise (a name there without a table is ignored, as json keys that omniway
does not read are). Names are not listed from the data: that would read every tar twice.

Two passes over each tar. First the member list, from the headers alone (`_member_names`,
tarfile: data is seeked past; a compressed tar is decompressed): a split key is only known
at the end of the tar, and holding the members' bytes until then would hold the whole tar
in memory. Then the members' bytes, in one streaming pass through webdataset's own
`tariterators.tar_file_iterator` (`_MemberBytes`), one sample at a time.
Importing webdataset imports torch (webdataset/__init__ -> compat -> pytorch): about a
second and ~200 MB of RSS per read-task process, paid only by processes that read a
webdataset source (the import is in `_MemberBytes`).
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import zlib
from typing import Iterator, TYPE_CHECKING

from pipelines.data.records import raw_record, reject_record
from pipelines.data.sources import label_lookup, list_files, parse_label, unsafe_relpath

if TYPE_CHECKING:  # config classes for annotations only: pipelines.data does not import the stages
    from pipelines.stages.corpus import SourceConfig

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
        names = _member_names(path)
        with open(path, "rb") as f:
            yield from _samples(src, shard, names, _MemberBytes(f, names), label_lookup(src))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:  # zlib: a corrupt .tar.gz
        yield reject_record(src.name, shard, "read_error", f"{type(e).__name__}: {e}"[:300])


def _member_names(path: str) -> list[str]:
    """Names of the tar's regular files, in tar order, from the headers alone (data is seeked past).

    Hand-written with tarfile because webdataset has no header-only listing, and its
    `tar_file_iterator` never shows a top-level name of the form `__*__` (hard-coded, not
    turned off by `skip_meta=None`); omniway groups those too, so a sample with such a
    member in the middle is still a split_sample, as it always was. An unreadable tar raises
    here, before any sample of it is yielded: one read_error for the file.
    """
    with tarfile.open(path, "r:*") as tar:
        return [m.name for m in tar.getmembers() if m.isfile()]


def _hidden_by_webdataset(name: str) -> bool:
    # tar_file_iterator's own meta rule (webdataset 1.0): `continue` before select_files is asked
    return "/" not in name and name.startswith("__") and name.endswith("__")


class _MemberBytes:
    """The bytes of chosen members, read in tar order by webdataset's `tar_file_iterator`.

    `get(i)` returns the data of `names[i]`; calls must come in increasing `i`. The iterator
    is a generator that asks `select_files` about each member when it reaches it, so the
    answer is "only the member asked for now": members nobody asks for (those of samples
    rejected as split or for their paths, or after an early reject) are skipped unread, as
    `extractfile` skipped them before. Errors reach the caller (webdataset's default handler,
    reraise_exception) instead of being skipped.

    Args:
        fileobj: the tar file, open for binary reading at offset 0.
        names: `_member_names` of that tar.
    """

    def __init__(self, fileobj, names: list[str]):
        from webdataset.tariterators import tar_file_iterator

        self._fileobj = fileobj
        self._names = names
        # positions (in `names`) of the members tar_file_iterator will ask select_files about
        self._visible = [i for i, n in enumerate(names) if not _hidden_by_webdataset(n)]
        self._asked = 0      # select_files calls so far
        self._wanted = -1    # position whose bytes get() wants
        self._it = tar_file_iterator(fileobj, skip_meta=None, select_files=self._select)

    def _select(self, fname: str) -> bool:
        if self._asked >= len(self._visible) or self._names[self._visible[self._asked]] != fname:
            # a webdataset that filters members differently would shift every member after it
            raise RuntimeError(f"webdataset's tar_file_iterator offered {fname!r} where omniway's "
                               "header index expected another member: this webdataset version "
                               "filters tar members differently; omniway would misread the tar")
        pos = self._visible[self._asked]
        self._asked += 1
        return pos == self._wanted

    def get(self, i: int) -> bytes:
        if _hidden_by_webdataset(self._names[i]):
            raise AssertionError(f"{self._names[i]!r}: webdataset never yields this member")
        self._wanted = i
        try:
            item = next(self._it)
        except StopIteration:
            raise tarfile.ReadError(f"{self._names[i]}: missing from the tar stream") from None
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            # webdataset appends " @ <file object>" (an absolute path) to the message; drop it so
            # the reject's detail, part of the corpus output, stays what it was and portable
            suffix = f" @ {self._fileobj}"
            if e.args and isinstance(e.args[0], str) and e.args[0].endswith(suffix):
                e.args = (e.args[0][:-len(suffix)],) + e.args[1:]
            raise
        assert item["fname"] == self._names[i], (item["fname"], self._names[i])
        return item["data"]


def _samples(src, shard, names: list[str], member_bytes: _MemberBytes,
             classes: dict[str, int]) -> Iterator[dict]:
    # Group adjacent members by key, remembering keys that come back later. Not webdataset's
    # group_by_keys: it starts a new sample whenever the key changes, so a key whose members are
    # not adjacent comes out as two half samples; it also drops names without a dot and raises
    # on a repeated extension. A split key is only known at the end of the tar, hence the index.
    groups: list[tuple[str, list[int]]] = []  # (key, positions in `names`), tar order
    seen: set[str] = set()
    split: set[str] = set()
    for i, name in enumerate(names):
        key, _ = split_key(name)
        if groups and groups[-1][0] == key:
            groups[-1][1].append(i)
            continue
        if key in seen:
            split.add(key)
        seen.add(key)
        groups.append((key, [i]))
    reported: set[str] = set()
    for key, group in groups:
        sample_key = f"{shard}/{key}"
        if key in split:
            if key not in reported:  # one reject per key, however many fragments
                reported.add(key)
                yield reject_record(src.name, sample_key, "split_sample",
                                    "members of this key are not adjacent in the tar")
            continue
        bad = [names[i] for i in group if unsafe_relpath(names[i])]
        if bad:
            yield reject_record(src.name, sample_key, "unsafe_path", ", ".join(bad)[:300])
            continue
        yield _assemble(src, sample_key, names, group, member_bytes, classes)


def _assemble(src, sample_key, names, group, member_bytes: _MemberBytes, classes: dict[str, int]) -> dict:
    fields: dict = {}
    for i in group:
        ext = split_key(names[i])[1]
        last = ext.rsplit(".", 1)[-1]
        if last in UNSUPPORTED_MEDIA:
            return reject_record(src.name, sample_key, "unsupported_format", f"member {names[i]}")
        if _hidden_by_webdataset(names[i]):
            # never yielded by webdataset; its extension ends in "__" (or it has none), which
            # no field uses, so only its place in the grouping matters
            continue
        data = member_bytes.get(i)
        if last in IMAGE_EXTS:
            fields["image"], fields["image_ext"] = data, last
        elif last in AUDIO_EXTS:
            fields["audio"], fields["audio_ext"] = data, last
        elif last == "txt":
            fields["text"] = data
        elif last == "cls":
            label, why = parse_label(data, classes)
            if why or label is None:
                detail = f"bad .cls {data[:40]!r}" + (f": {why}" if classes else "")
                return reject_record(src.name, sample_key, "read_error", detail[:300])
            fields["label"] = label
        elif last == "json":
            try:
                meta = json.loads(data)
            except (ValueError, UnicodeDecodeError) as e:
                return reject_record(src.name, sample_key, "read_error", f"bad json: {e}"[:300])
            if isinstance(meta, dict):
                if meta.get(src.text_field) is not None:
                    fields.setdefault("json_text", str(meta[src.text_field]).encode())
                value = meta.get(src.label_field)
                if isinstance(value, int) or (classes and isinstance(value, str)):
                    label, why = parse_label(value, classes)
                    if why:
                        return reject_record(src.name, sample_key, "read_error", f"json {why}"[:300])
                    if label is not None:
                        fields.setdefault("label", label)
    if "text" not in fields and "json_text" in fields:
        fields["text"] = fields["json_text"]
    fields.pop("json_text", None)
    return raw_record(src.name, sample_key, **fields)
