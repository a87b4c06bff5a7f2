"""Source readers: one module per input format, all with the same two functions.

    plan(src: SourceConfig) -> list[dict]          # work units, cheap, in the driver
    read(src: SourceConfig, unit: dict) -> Iterator[raw record]   # in a Ray task

A unit is a small JSON-able dict (a tar path, a list of files...). Readers only
locate bytes; decoding and validation happen in `normalize.py`.
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
