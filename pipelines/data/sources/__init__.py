"""Source readers: one module per input format, all with the same two functions.

    plan(src: SourceConfig) -> list[dict]          # work units, cheap, in the driver
    read(src: SourceConfig, unit: dict) -> Iterator[raw record]   # in a Ray task

A unit is a small JSON-able dict (a tar path, a list of files...). Readers only
locate bytes; decoding and validation happen in `normalize.py`.

Labels: an integer (or its decimal string) is the label itself; any other string is a class name,
stored as its place in the source's `label_names` (`parse_label`). Where a source has names but no
configured table, the corpus stage lists them before anything is read (`labels_in_data`, for the
formats whose labels can be listed without reading the media) and records them sorted.
"""

from __future__ import annotations

import glob
import importlib
import os
from typing import Iterator, TYPE_CHECKING

if TYPE_CHECKING:  # config classes for annotations only: pipelines.data does not import the stages
    from pipelines.stages.corpus import SourceConfig


_MODULES = {"webdataset": "webdataset", "jsonl": "index", "csv": "index", "parquet": "parquet",
            "text": "texttree", "tuxpaint": "demo", "asterisk": "demo", "digits": "demo"}

DEFAULT_EXTENSIONS = {"webdataset": [".tar"], "jsonl": [".jsonl"], "csv": [".csv"],
                      "parquet": [".parquet"], "text": [".txt", ".rst"]}


def _module(fmt: str):
    return importlib.import_module(f"pipelines.data.sources.{_MODULES[fmt]}")


def plan(src: SourceConfig) -> list[dict]:
    """Work units of one source, in a deterministic order, each tagged with the source name."""
    units = _module(src.format).plan(src)
    return [{"source": src.name, "unit": i, **u} for i, u in enumerate(units)]


def read(src: SourceConfig, unit: dict) -> Iterator[dict]:
    return _module(src.format).read(src, unit)


def label_lookup(src: SourceConfig) -> dict[str, int]:
    """Class name -> label of a source (its `label_names`, in order)."""
    return {name: i for i, name in enumerate(src.label_names)}


def label_name(value) -> str | None:
    """The class name a raw label holds (surrounding whitespace aside), or None for an integer, a
    decimal string, a blank or no label."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        int(value)
    except ValueError:
        return value.strip()
    return None


def parse_label(value, names: dict[str, int]) -> tuple[int | None, str]:
    """A raw label -> (label or None, "" or why the record is refused).

    None / "" (blank) -> no label; an int or a decimal string -> that int; any other string -> its
    index in ``names`` (``label_lookup``), surrounding whitespace aside.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None, f"label {value[:40]!r} is not UTF-8"
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, ""
    name = label_name(value)
    if name is None:
        try:
            return int(value), ""
        except (TypeError, ValueError):
            return None, f"label {value!r} is neither an integer nor a class name"
    if name in names:
        return names[name], ""
    if not names:
        return None, f"label {name!r} is a class name, and the source has no label_names"
    return None, f"label {name!r} is not one of the source's {len(names)} label_names"


def labels_in_data(src: SourceConfig) -> tuple[list[str], int] | None:
    """(sorted distinct class names, number of integer labels) among the records the source's reader
    will yield (its `limit` and `max_files` applied); None for a format whose labels cannot be listed
    without reading its media (webdataset tars) or that has no label column (text, demo corpora)."""
    lister = getattr(_module(src.format), "label_values", None)
    if lister is None:
        return None
    names, numbers = set(), 0
    for value in lister(src):
        name = label_name(value)
        if name is not None:
            names.add(name)
        elif parse_label(value, {})[0] is not None:
            numbers += 1
    return sorted(names), numbers


def list_files(src: SourceConfig, default_exts: list[str] | None = None) -> list[str]:
    """Files of a source: `path` as a file, a directory (recursive) or a glob; sorted."""
    exts = tuple(src.extensions or default_exts or DEFAULT_EXTENSIONS.get(src.format, []))
    if os.path.isfile(src.path):
        files = [src.path]
    elif os.path.isdir(src.path):
        files = [os.path.join(d, f) for d, _, names in os.walk(src.path) for f in names]
    else:
        files = glob.glob(src.path, recursive=True)
    files = sorted(f for f in files if os.path.isfile(f) and (not exts or f.endswith(exts)))
    if not files:
        raise FileNotFoundError(f"source {src.name!r}: no {list(exts)} files at {src.path!r}")
    return files[:src.max_files] if src.max_files else files


def chunk(items: list, size: int) -> list[list]:
    size = max(1, size)
    return [items[i:i + size] for i in range(0, len(items), size)]


def unsafe_relpath(path: str) -> bool:
    """Absolute, or climbing out with `..`: never follow such a path from a tar or an index."""
    return path.startswith(("/", "\\")) or os.path.isabs(path) or ".." in path.replace(
        "\\", "/").split("/")
