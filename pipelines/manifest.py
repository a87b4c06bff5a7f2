"""The manifest: what a committed stage output holds, and its fingerprint.

`_manifest.json` lists every file of the output (relative path, size, sha256,
row count where the stage knows it), the stage's metrics and whatever the
stage adds under `extra` (a schema version, rows per split, tokenizer
fingerprints...). Downstream stages read their inputs only through it.

The fingerprint hashes the stage key and the files' content hashes, so a
forced rerun that reproduces the same bytes leaves everything downstream
cached, while a changed byte invalidates it. The metrics a stage could not send
to MLflow (kept in its output for `omniway sync-metrics`) are not part of it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

MANIFEST_FORMAT = "omniway.manifest/1"


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint_of(key: str, files: list[dict]) -> str:
    """The stage key and the content hashes of ``files``, but for the metrics the stage logged and MLflow did
    not take (``metrics_sender.is_unsent_file``): an output built while tracking failed is the same output as
    a clean rebuild's, and what reads it stays cached. Its manifest still lists them: checks cover them."""
    from pipelines.train.metrics_sender import is_unsent_file

    h = hashlib.sha256(key.encode())
    for entry in sorted(files, key=lambda e: e["path"]):
        if is_unsent_file(entry["path"]):
            continue
        h.update(f"\n{entry['path']}\0{entry['sha256']}".encode())
    return h.hexdigest()[:32]


def file_contents(files: list[dict]) -> list[dict]:
    """Manifest file entries without what says when they were written (``mtime_ns``): what two runs that
    wrote the same bytes have in common."""
    return [{k: v for k, v in e.items() if k != "mtime_ns"} for e in files]


def describe_files(work_dir: str, rows: dict[str, int] | None = None,
                   known_sha256: dict[str, str] | None = None) -> list[dict]:
    """List every file under `work_dir` (sorted, relative, hashed). `known_sha256` holds
    hashes the stage computed as it wrote (relative path -> hex); other files are read."""
    rows = rows or {}
    known_sha256 = known_sha256 or {}
    entries = []
    for dirpath, dirnames, filenames in os.walk(work_dir):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, work_dir).replace(os.sep, "/")
            if rel.startswith("_manifest.json"):
                continue
            st = os.stat(full)
            # size and mtime: what pipelines.integrity compares before trusting the file again
            entry: dict[str, Any] = {"path": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                     "sha256": known_sha256.get(rel) or sha256_file(full)}
            if rel in rows:
                entry["rows"] = int(rows[rel])
            entries.append(entry)
    unknown = (set(rows) | set(known_sha256)) - {e["path"] for e in entries}
    if unknown:
        raise ValueError(f"row counts or hashes given for files the stage did not write: {sorted(unknown)}")
    return entries


@dataclass
class Manifest:
    """A committed stage output as downstream stages see it.

    Args:
        dir: where the output lives (a local path, or a path inside the storage
            filesystem when `storage_uri` is a URI).
        data: the parsed `_manifest.json`.
        storage_uri: the storage root the output belongs to.
    """

    dir: str
    data: dict
    storage_uri: str = ""
    _storage: Any = field(default=None, repr=False, compare=False)

    @property
    def stage(self) -> str:
        return self.data["stage"]

    @property
    def kind(self) -> str:
        return self.data["kind"]

    @property
    def key(self) -> str:
        return self.data["key"]

    @property
    def fingerprint(self) -> str:
        return self.data["fingerprint"]

    @property
    def files(self) -> list[dict]:
        return self.data["files"]

    @property
    def metrics(self) -> dict:
        return self.data.get("metrics", {})

    @property
    def extra(self) -> dict:
        return self.data.get("extra", {})

    @property
    def schema_version(self) -> str | None:
        return self.data.get("schema_version")

    @property
    def mlflow_run_id(self) -> str | None:
        return self.data.get("mlflow_run_id")

    def path(self, rel: str) -> str:
        """Path of one file of this output, as the storage filesystem names it."""
        return f"{self.dir}/{rel}"

    def paths(self, suffix: str = "", prefix: str = "") -> list[str]:
        return [self.path(e["path"]) for e in self.files
                if e["path"].endswith(suffix) and e["path"].startswith(prefix)]

    @property
    def storage(self):
        if self._storage is None:
            from pipelines.storage import Storage

            self._storage = Storage(self.storage_uri)
        return self._storage

    def open(self, rel: str):
        """Open one file of this output for binary reading, local or remote."""
        return self.storage.open_input(self.path(rel))

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2, sort_keys=True)
