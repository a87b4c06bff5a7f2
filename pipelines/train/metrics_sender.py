"""The MLflow writer a stage never waits on: training's rank 0 (``RunLogger``) and every stage's
``StageContext.log_metrics`` / ``log_artifact`` / ``log_table`` go through it.

A call appends one JSON line (metrics with their step and wall-clock timestamp, a table, an artifact) to a
local spool file and returns; the files a line names (a table's images, an artifact) are copied beside the
spool at once, so the caller may delete or overwrite its own. A background thread reads the spool in order
and sends each line to MLflow. While the server is down or hung the thread retries the same line with a
growing pause, so lines are sent in order, with their original steps and timestamps, once it answers;
memory holds one line at a time whatever the outage. Without a run (the run is not tracked: MLflow did not
answer when it began) nothing is sent and every line is kept. ``close`` gives the thread a bounded time to
drain, then writes what is left where the caller says: ``UNSENT_FILE`` (JSON lines) and the files its lines
name (``unsent_metrics-*``, named relative to it) in the stage output, which `omniway sync-metrics` sends
later.

The spool outlives its sender: beside it, ``PROGRESS_FILE`` counts the lines that reached the server. A
sender opened on a spool an earlier one left (training's rank 0 died and Ray Train restarted the worker group
on the same directory) goes on from there: it sends the lines the dead one had not, with their own steps and
timestamps, and none it had; a line cut short by the death is dropped. The restarted rank 0 replays the steps
since its checkpoint: a line for what the spool already holds (a step's metrics, a table or artifact of the
same name) is not spooled again. A line sent just before a death may be sent a second time (the count is
written after the server took it); MLflow keeps one copy of a metric logged twice with the same step,
timestamp and value, and a table or artifact replaces its namesake.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time

UNSENT_FILE = "unsent_metrics.jsonl"
SPOOL_FILE, PROGRESS_FILE = "spool.jsonl", "spool.sent"  # PROGRESS_FILE: lines of SPOOL_FILE sent
MEDIA_PREFIX = "unsent_metrics-"  # the files the lines of UNSENT_FILE name, beside it (flat: exports copy files)
# MLflow's HTTP client waits 120 s per request and retries 7 times by default: the thread retries itself,
# with these shorter bounds, so a hung server costs seconds, not minutes, per attempt
REQUEST_TIMEOUT_S, REQUEST_RETRIES = "10", "0"
# how long a (non-training) stage waits at its end for the sender to drain before keeping the rest
STAGE_DRAIN_S = 15.0


def bounded_http() -> None:
    """Bound MLflow's HTTP calls in this process (and the Ray workers it starts) to ``REQUEST_TIMEOUT_S`` and
    ``REQUEST_RETRIES``, unless the user set MLFLOW_HTTP_REQUEST_TIMEOUT / _MAX_RETRIES: a hung server then
    costs one timeout per call, not MLflow's default of 7 retries of 120 s."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", REQUEST_TIMEOUT_S)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", REQUEST_RETRIES)


def _local(base_dir: str | None, path: str) -> str:
    return os.path.join(base_dir, path) if base_dir else path  # an absolute path stays as it is


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # no second copy of a large file; the caller replaces files, never edits them
    except OSError:
        shutil.copy2(src, dst)


def missing_media(item: dict, base_dir: str | None = None) -> list[str]:
    """The files ``item`` names that are not there (relative to ``base_dir``)."""
    return [p for p in media_of(item) if not os.path.isfile(_local(base_dir, p))]


def send_line(client, run_id: str, item: dict, base_dir: str | None = None) -> bool:
    """Send one spooled line to MLflow run ``run_id`` (also what ``omniway sync-metrics`` replays); False,
    and nothing sent, when a file it names is not there (``missing_media``). The files a line names are
    relative to ``base_dir`` (the spool, or the stage output that keeps the line)."""
    if missing_media(item, base_dir):
        return False
    if item["kind"] == "metrics":
        from pipelines.tracking import log_metrics

        log_metrics(client, run_id, item["metrics"], int(item["step"]), int(item["timestamp_ms"]))
    elif item["kind"] == "table":
        from PIL import Image

        def image(p):
            with Image.open(_local(base_dir, p)) as im:
                return im.copy()

        columns = {k: ([image(p) for p in v] if k in item.get("image_columns", []) else v)
                   for k, v in item["columns"].items()}
        client.log_table(run_id, data=columns, artifact_file=item["artifact_file"])
    elif item["kind"] == "artifact":
        path = _local(base_dir, item["path"])
        name = item.get("name") or os.path.basename(path)
        if os.path.basename(path) == name:
            client.log_artifact(run_id, path, item.get("artifact_path"))
            return True
        import tempfile

        with tempfile.TemporaryDirectory(prefix="omniway-artifact-") as tmp:  # MLflow names it by its file
            _link_or_copy(path, os.path.join(tmp, name))
            client.log_artifact(run_id, os.path.join(tmp, name), item.get("artifact_path"))
    else:
        raise ValueError(f"unknown spooled item kind {item['kind']!r}")
    return True


def is_unsent_file(rel: str) -> bool:
    """Is ``rel`` (a path in a stage output) ``UNSENT_FILE`` or a file its lines name?"""
    return rel == UNSENT_FILE or (rel.startswith(MEDIA_PREFIX) and "/" not in rel)


def _identity(item: dict) -> tuple:
    """What a spooled line is about: a restarted rank 0 logging it again replays it."""
    if item["kind"] == "metrics":
        return ("metrics", int(item["step"]))
    if item["kind"] == "table":
        return ("table", item["artifact_file"])
    return ("artifact", item.get("artifact_path"), item.get("name"))


def _held_lines(path: str) -> list[dict]:
    """The complete lines of the spool at ``path`` (none if there is none); a last line cut short (its writer
    died as it wrote it) is cut off the file."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return []
    end = raw.rfind(b"\n") + 1
    if end < len(raw):
        with open(path, "r+b") as f:
            f.truncate(end)
    return [json.loads(x) for x in raw[:end].decode().splitlines()]


def media_of(item: dict) -> list[str]:
    """The files (relative paths) a spooled line names."""
    if item["kind"] == "artifact":
        return [item["path"]]
    if item["kind"] == "table":
        return [p for k in item.get("image_columns", []) for p in item["columns"][k]]
    return []


class MetricsSender:
    """Spool + background sender (see the module docs).

    Args:
        tracking_uri: MLflow tracking URI.
        run_id: the MLflow run the lines go to; None: the run is not tracked, every line is kept for
            `omniway sync-metrics`.
        spool_dir: a local directory for the spool file and the files its lines name; one where an earlier
            sender (a rank 0 that died) spooled is taken over (see the module docs).
    """

    def __init__(self, tracking_uri: str | None, run_id: str | None, spool_dir: str):
        os.makedirs(spool_dir, exist_ok=True)
        self.tracking_uri, self.run_id, self.spool_dir = tracking_uri, run_id, spool_dir
        self.path = os.path.join(spool_dir, SPOOL_FILE)
        self._progress = os.path.join(spool_dir, PROGRESS_FILE)
        held = _held_lines(self.path)  # what an earlier sender on this spool left
        self._replayed = {_identity(item) for item in held}
        self._out = open(self.path, "a", encoding="utf-8")
        self._written, self._sent = len(held), min(self._read_progress(), len(held))  # lines
        self.resumed = len(held)  # lines an earlier sender spooled here
        # wake: a line was appended; retry: close wants the line being retried tried again now; stop: send
        # nothing more
        self._wake, self._stop, self._retry = threading.Event(), threading.Event(), threading.Event()
        self._lock = threading.Lock()
        self.failures = 0
        self.skipped = 0  # lines whose files were gone before they could be sent
        self._thread = None
        if run_id:
            self._thread = threading.Thread(target=self._run, name="omniway-metrics-sender", daemon=True)
            self._thread.start()

    def _read_progress(self) -> int:
        try:
            with open(self._progress, encoding="utf-8") as f:
                return int(f.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _write_progress(self) -> None:
        tmp = self._progress + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(str(self._sent))
        os.replace(tmp, self._progress)  # whole or the previous count: never a torn number

    # -- the caller's side: append and return -------------------------------------------------------------
    def _append(self, item: dict) -> None:
        with self._lock:
            self._out.write(json.dumps(item) + "\n")
            self._out.flush()
            self._written += 1
        self._wake.set()

    def _media_name(self, name: str) -> str:
        with self._lock:  # numbered by the line that names it: unique within the spool and the output
            return f"{MEDIA_PREFIX}{self._written}-{name}"

    def _spooled(self, identity: tuple) -> bool:
        """An earlier sender on this spool holds a line about the same (a replayed step): do not add one."""
        return identity in self._replayed

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        if self._spooled(("metrics", int(step))):
            return
        self._append({"kind": "metrics", "metrics": metrics, "step": int(step),
                      "timestamp_ms": int(time.time() * 1000)})

    def table(self, columns: dict[str, list], artifact_file: str) -> None:
        """Columns may hold PIL images: they are saved beside the spool and the line names the files."""
        if self._spooled(("table", artifact_file)):
            return
        images, cols = [], {}
        for name, values in columns.items():
            if values and all(hasattr(v, "save") and hasattr(v, "resize") for v in values):
                paths = []
                for v in values:
                    rel = self._media_name(f"{name}-{len(paths)}.png")
                    v.save(os.path.join(self.spool_dir, rel))
                    paths.append(rel)
                cols[name], images = paths, images + [name]
            else:
                cols[name] = values
        self._append({"kind": "table", "columns": cols, "image_columns": images, "artifact_file": artifact_file})

    def artifact(self, path: str, artifact_path: str | None = None) -> None:
        """Attach the file ``path`` (under ``artifact_path`` in the run's artifacts); a file that is not there
        is no error (a plot that could not be drawn)."""
        if not os.path.isfile(path) or self._spooled(("artifact", artifact_path, os.path.basename(path))):
            return
        rel = self._media_name(os.path.basename(path))
        _link_or_copy(path, os.path.join(self.spool_dir, rel))
        self._append({"kind": "artifact", "path": rel, "name": os.path.basename(path),
                      "artifact_path": artifact_path})

    @property
    def pending(self) -> int:
        return self._written - self._sent

    # -- the thread ---------------------------------------------------------------------------------------
    def _client(self):
        bounded_http()
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.tracking_uri)

    def _run(self) -> None:
        client = self._client()
        pause = 0.5
        with open(self.path, encoding="utf-8") as f:
            for _ in range(self._sent):  # sent by an earlier sender on this spool
                f.readline()
            while True:
                if self._stop.is_set():  # past close's deadline: what is not sent yet stays unsent
                    return
                pos = f.tell()
                line = f.readline()
                if not line.endswith("\n"):  # nothing complete yet
                    f.seek(pos)
                    if self._stop.is_set():
                        return
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                while True:
                    try:
                        if not send_line(client, self.run_id, json.loads(line), self.spool_dir):
                            self.skipped += 1  # its file is gone from the spool: it can never be sent
                        pause = 0.5
                        break
                    except Exception:  # the server is down, hung or refusing: keep the line, retry it
                        self.failures += 1
                        if self._stop.is_set():
                            return
                        self._retry.wait(pause)
                        self._retry.clear()
                        pause = min(2 * pause, 15.0)
                self._sent += 1
                self._write_progress()

    def close(self, timeout_s: float, unsent_path: str | None = None) -> int:
        """Wait up to ``timeout_s`` for the spool to drain, stop the thread, and write the lines not sent to
        ``unsent_path`` (JSON lines), the files they name beside it; returns their number. A thread pausing
        between tries of a line tries again at once (a server back since gets the rest without delay)."""
        deadline = time.time() + timeout_s
        self._retry.set()
        while self._thread is not None and self.pending and time.time() < deadline:
            time.sleep(0.1)
        self._stop.set()
        self._wake.set()
        self._retry.set()
        if self._thread is not None:
            # an attempt in flight ends within the request timeout: after it, the count of sent lines is final
            self._thread.join(timeout=max(0.0, deadline - time.time()) + float(REQUEST_TIMEOUT_S) + 2.0)
        self._out.close()
        left = self.pending
        if left and unsent_path:
            keep_dir = os.path.dirname(os.path.abspath(unsent_path))
            with open(self.path, encoding="utf-8") as f:
                lines = f.readlines()[self._sent:]
            for line in lines:
                for rel in media_of(json.loads(line)):
                    if os.path.exists(os.path.join(self.spool_dir, rel)):
                        _link_or_copy(os.path.join(self.spool_dir, rel), os.path.join(keep_dir, rel))
            with open(unsent_path, "w", encoding="utf-8") as f:
                f.writelines(lines)
        if self._thread is None or not self._thread.is_alive():  # the spool served its purpose
            shutil.rmtree(self.spool_dir, ignore_errors=True)
        return left


def keep_unsent(sender: MetricsSender, timeout_s: float, unsent_path: str, label: str) -> int:
    """Close ``sender`` (``timeout_s`` to drain), keep what it did not send at ``unsent_path`` (``UNSENT_FILE``
    in a stage output) and say so on the console as ``[label] ...``; returns the number of lines kept."""
    left = sender.close(timeout_s, unsent_path)
    if left:
        why = ("the tracking server did not take" if sender.run_id else
               "this run is not tracked (MLflow did not start it):")
        sys.stdout.write(f"[{label}] {why} {left} logged lines; they are kept in the stage output "
                         f"({os.path.basename(unsent_path)}): `omniway sync-metrics` sends them\n")
        sys.stdout.flush()
    return left
