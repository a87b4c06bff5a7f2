"""Run one stage kind and commit its output: the body of every stage's Ray task.

`execute_stage` is what runs on a Ray worker (or in-process, for tests of a
single kind): it builds the `StageContext`, calls the kind, lists and hashes
what it wrote, and commits the directory with `_manifest.json` written last.
If the kind raises, the work directory is removed and nothing is committed.
"""

from __future__ import annotations

import datetime as _dt
import time
from typing import Any

from pipelines.context import StageContext
from pipelines.manifest import MANIFEST_FORMAT, Manifest, describe_files, fingerprint_of
from pipelines.registry import get_kind, load_modules
from pipelines.storage import Storage


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    return value


def execute_stage(*, pipeline: str, stage: str, kind: str, key: str, config: Any,
                  config_dict: dict, inputs: dict[str, Manifest], storage: Storage,
                  run_id: str | None = None, tracking_uri: str | None = None,
                  plugins: tuple[str, ...] = (), forced: bool = False, replace: bool | None = None) -> dict:
    """Execute `kind` for `stage` and commit its output; return the manifest dict. ``replace``: an existing
    output of the key is replaced (default: when ``forced``; also a damaged output being rebuilt)."""
    load_modules(plugins)
    stage_kind = get_kind(kind)
    output_dir = storage.output_dir(pipeline, stage, key)
    work_dir = storage.new_work_dir(pipeline, stage, key)
    for manifest in inputs.values():
        manifest.storage_uri = manifest.storage_uri or storage.root
    ctx = StageContext(pipeline=pipeline, stage=stage, kind=kind, key=key, config=config,
                       inputs=inputs, output_dir=work_dir,
                       run_id=run_id, tracking_uri=tracking_uri,
                       storage_uri=storage.uri_root if not storage.local else storage.root, forced=forced)
    started = time.time()
    try:
        metrics = stage_kind.fn(ctx) or {}
        if not isinstance(metrics, dict):
            raise TypeError(f"stage kind {kind!r} returned {type(metrics).__name__}, "
                            "expected a dict of metrics")
        files = describe_files(work_dir, ctx.rows, ctx.sha256)
        data = {
            "format": MANIFEST_FORMAT,
            "pipeline": pipeline,
            "stage": stage,
            "kind": kind,
            "kind_version": stage_kind.version,
            "key": key,
            "config": config_dict,
            "inputs": {name: m.fingerprint for name, m in inputs.items()},
            "files": files,
            "rows": sum(e.get("rows", 0) for e in files) if ctx.rows else None,
            "schema_version": ctx.schema_version,
            "metrics": _jsonable(metrics),
            "extra": _jsonable(ctx.extra),
            "mlflow_run_id": run_id,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "duration_s": round(time.time() - started, 3),
            "fingerprint": fingerprint_of(key, files),
        }
    except BaseException:
        storage.discard(work_dir)
        raise
    finally:
        ctx.remove_scratch()
    if not storage.commit(work_dir, output_dir, data, replace=forced if replace is None else replace):
        # Another run of the same pipeline committed this key first; its output
        # is equivalent, and it is the one on disk, so report that one.
        data = storage.read_manifest(output_dir)
    return data
