"""Run one stage kind and commit its output: the body of every stage's Ray task.

`execute_stage` is what runs on a Ray worker (or in-process, for tests of a
single kind): it builds the `StageContext`, calls the kind, lists and hashes
what it wrote, and commits the directory with `_manifest.json` written last.
If the kind raises, the work directory is removed and nothing is committed.
What the stage logged to MLflow and the server did not take by then is kept in
the output (``unsent_metrics.jsonl``): a tracking failure never loses a stage.
A full disk (ENOSPC / EDQUOT while the stage writes, or while its manifest is
written) is reported as a `DiskFullError` that names the filesystem and the
space free there; nothing of the stage's output is left behind.
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
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


class DiskFullError(OSError):
    """No space left (or the quota spent) where a stage writes. ``errno`` is ENOSPC / EDQUOT;
    the message names the path and the space free there. Built as ``DiskFullError(errno, message)``
    so that it pickles (Ray ships it back to the driver)."""

    def __str__(self) -> str:
        return str(self.strerror)


_DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded")


def _disk_full_cause(exc: BaseException) -> BaseException | None:
    """The ENOSPC / EDQUOT error in `exc`'s chain (a library may wrap the OSError), else None."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and (e.errno in _DISK_FULL
                                       or any(t in str(e).lower() for t in _DISK_FULL_TEXT)):
            return e
        todo += [e.__cause__, e.__context__]
    return None


def _existing(path: str) -> str:
    while path and not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path or "."


def _free(path: str) -> int | None:
    import shutil

    try:
        return shutil.disk_usage(_existing(path)).free
    except OSError:
        return None


def _no_inodes(path: str) -> bool:
    """The filesystem of `path` has no file entries left (ENOSPC with bytes free: tmpfs, ext4's inodes)."""
    try:
        st = os.statvfs(_existing(path))
    except (OSError, AttributeError):
        return False
    return st.f_files > 0 and st.f_favail == 0


def _size(n: int | None) -> str:
    if n is None:
        return "an unknown amount"
    if n < 1024:
        return f"{n} bytes"
    value, unit = float(n), "bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024:
            break
    return f"{value:.1f} {unit}"


class _DiskFull:
    """What a disk-full failure says, measured before the partial output is removed and after."""

    def __init__(self, cause: BaseException, *, stage: str, key: str, work_dir: str, fs_path: str):
        self.cause, self.stage, self.key, self.work_dir, self.fs_path = cause, stage, key, work_dir, fs_path
        filename = getattr(cause, "filename", None)
        # a path the error names outside the work directory (a scratch directory, a cache): that is
        # the filesystem that filled up
        self.elsewhere = (str(filename) if isinstance(filename, (str, os.PathLike)) and filename
                          and not os.path.abspath(str(filename)).startswith(os.path.abspath(work_dir) + os.sep)
                          and os.path.abspath(str(filename)) != os.path.abspath(work_dir) else None)
        self.free_then = _free(self.fs_path)
        self.no_inodes = _no_inodes(self.fs_path)
        self.free_elsewhere = _free(self.elsewhere) if self.elsewhere else None

    def error(self, left_behind: bool = False) -> DiskFullError:
        code = getattr(self.cause, "errno", None)
        if code not in _DISK_FULL:  # recognised by its text only
            code = errno.EDQUOT if "quota" in str(self.cause).lower() else errno.ENOSPC
        what = _DISK_FULL[code]
        free_now = _free(self.fs_path)
        free = f"{_size(self.free_then)} free on {self.fs_path}"
        if free_now is not None and self.free_then is not None and free_now > self.free_then:
            free += f" when it failed, {_size(free_now)} once its partial output was removed"
        if self.no_inodes:
            free += " but no free inodes (no new file or directory fits)"
        where = f"to {self.work_dir}"
        if self.elsewhere:
            where = (f"to {self.elsewhere} ({_size(self.free_elsewhere)} free there; "
                     f"its output goes to {self.work_dir})")
        msg = (f"{what} while writing stage {self.stage!r} (key {self.key}) {where}: {free}; "
               "free space and rerun (cached stages are kept)")
        if left_behind:
            msg += f"; its partial output {self.work_dir} could not be removed: delete it by hand"
        return DiskFullError(code, msg)


def execute_stage(*, pipeline: str, stage: str, kind: str, key: str, config: Any,
                  config_dict: dict, inputs: dict[str, Manifest], storage: Storage,
                  run_id: str | None = None, tracking_uri: str | None = None,
                  plugins: tuple[str, ...] = (), forced: bool = False, replace: bool | None = None) -> dict:
    """Execute `kind` for `stage` and commit its output; return the manifest dict. ``replace``: an existing
    output of the key is replaced (default: when ``forced``; also a damaged output being rebuilt)."""
    load_modules(plugins)
    stage_kind = get_kind(kind)
    output_dir = storage.output_dir(pipeline, stage, key)
    # the filesystem the output is written to: the storage root, or (remote storage) the local work dir's
    fs_path = storage.root if storage.local else None
    try:
        work_dir = storage.new_work_dir(pipeline, stage, key)
    except OSError as exc:
        if (cause := _disk_full_cause(exc)) is None:
            raise
        where = storage.stage_dir(pipeline, stage) if storage.local else _tmp_dir()
        raise _DiskFull(cause, stage=stage, key=key, work_dir=where,
                        fs_path=fs_path or where).error() from exc
    fs_path = fs_path or os.path.dirname(work_dir)
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
        # what the stage logged and MLflow did not take in time becomes part of the output, not lost
        unsent = ctx.close_tracking()
        if unsent:
            ctx.extra["tracking_unsent"] = unsent
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
    except BaseException as exc:
        try:  # the output is discarded: so is what its logging did not send (a few seconds to send it)
            ctx.close_tracking(keep=False, timeout_s=5.0 if isinstance(exc, Exception) else 0.0)
        except Exception:
            pass
        _fail(exc, storage, work_dir, stage=stage, key=key, fs_path=fs_path)
        raise
    finally:
        ctx.remove_scratch()
    try:
        committed = storage.commit(work_dir, output_dir, data, replace=forced if replace is None else replace)
    except BaseException as exc:
        # commit moves the work directory only as its last step: whatever it raised, the
        # directory (with any manifest in it) is still ours to remove
        _fail(exc, storage, work_dir, stage=stage, key=key, fs_path=fs_path)
        raise
    if not committed:
        # Another run of the same pipeline committed this key first; its output
        # is equivalent, and it is the one on disk, so report that one.
        data = storage.read_manifest(output_dir)
    return data


def _tmp_dir() -> str:
    import tempfile

    return tempfile.gettempdir()


def _fail(exc: BaseException, storage: Storage, work_dir: str, *, stage: str, key: str, fs_path: str) -> None:
    """A stage (or its commit) raised: remove its work directory; a full disk raises a
    `DiskFullError` chained to `exc`, anything else returns for the caller to re-raise."""
    cause = _disk_full_cause(exc) if isinstance(exc, Exception) else None
    full = _DiskFull(cause, stage=stage, key=key, work_dir=work_dir, fs_path=fs_path) if cause else None
    storage.discard(work_dir)
    if full is not None:
        raise full.error(left_behind=os.path.exists(work_dir)) from exc
