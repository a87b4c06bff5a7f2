"""Rank 0's MLflow writer that a training step never waits on.

A step appends its metrics (with their step and wall-clock timestamp) to a local spool file, one JSON line,
and goes on; a background thread reads the spool in order and sends each line to MLflow (metrics as one
``log_batch``, tables with their images, artifacts). While the server is down or hung the thread retries the
same line with a growing pause, so lines are sent in order, with their original steps and timestamps, once
it answers; memory holds one line at a time whatever the outage. ``close`` gives the thread a bounded time
to drain, then writes what is left (``UNSENT_FILE``, JSON lines) where the caller says: the stage output
keeps it, and ``omniway sync-metrics`` sends it later.
"""

from __future__ import annotations

import json
import os
import threading
import time

UNSENT_FILE = "unsent_metrics.jsonl"
# MLflow's HTTP client waits 120 s per request and retries 7 times by default: the thread retries itself,
# with these shorter bounds, so a hung server costs seconds, not minutes, per attempt
REQUEST_TIMEOUT_S, REQUEST_RETRIES = "10", "0"


def send_line(client, run_id: str, item: dict) -> None:
    """Send one spooled line to MLflow run ``run_id`` (also what ``omniway sync-metrics`` replays)."""
    if item["kind"] == "metrics":
        from mlflow.entities import Metric

        from pipelines.tracking import MAX_METRICS_PER_BATCH

        items = [Metric(k, float(v), int(item["timestamp_ms"]), int(item["step"])) for k, v in item["metrics"].items()]
        for i in range(0, len(items), MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=items[i:i + MAX_METRICS_PER_BATCH])
    elif item["kind"] == "table":
        from PIL import Image

        columns = {k: ([Image.open(p) for p in v] if k in item.get("image_columns", []) else v)
                   for k, v in item["columns"].items()}
        client.log_table(run_id, data=columns, artifact_file=item["artifact_file"])
    elif item["kind"] == "artifact":
        if os.path.exists(item["path"]):
            client.log_artifact(run_id, item["path"])
    else:
        raise ValueError(f"unknown spooled item kind {item['kind']!r}")


class MetricsSender:
    """Spool + background sender (see the module docs).

    Args:
        tracking_uri: MLflow tracking URI.
        run_id: the MLflow run the lines go to.
        spool_dir: a local directory for the spool file and the images of spooled tables.
    """

    def __init__(self, tracking_uri: str | None, run_id: str, spool_dir: str):
        os.makedirs(spool_dir, exist_ok=True)
        self.tracking_uri, self.run_id, self.spool_dir = tracking_uri, run_id, spool_dir
        self.path = os.path.join(spool_dir, "spool.jsonl")
        self._out = open(self.path, "a", encoding="utf-8")
        self._written = self._sent = 0  # lines
        self._wake, self._stop = threading.Event(), threading.Event()
        self._lock = threading.Lock()
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="omniway-metrics-sender", daemon=True)
        self._thread.start()

    # -- the training side: append and return -----------------------------------------------------------
    def _append(self, item: dict) -> None:
        with self._lock:
            self._out.write(json.dumps(item) + "\n")
            self._out.flush()
            self._written += 1
        self._wake.set()

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        self._append({"kind": "metrics", "metrics": metrics, "step": int(step),
                      "timestamp_ms": int(time.time() * 1000)})

    def table(self, columns: dict[str, list], artifact_file: str) -> None:
        """Columns may hold PIL images: they are saved beside the spool and the line names the files."""
        images, cols = [], {}
        for name, values in columns.items():
            if values and all(hasattr(v, "save") and hasattr(v, "resize") for v in values):
                paths = []
                for v in values:
                    p = os.path.join(self.spool_dir, f"img-{self._written}-{len(paths)}-{name}.png")
                    v.save(p)
                    paths.append(p)
                cols[name], images = paths, images + [name]
            else:
                cols[name] = values
        self._append({"kind": "table", "columns": cols, "image_columns": images, "artifact_file": artifact_file})

    def artifact(self, path: str) -> None:
        self._append({"kind": "artifact", "path": path})

    @property
    def pending(self) -> int:
        return self._written - self._sent

    # -- the thread ---------------------------------------------------------------------------------------
    def _client(self):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", REQUEST_TIMEOUT_S)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", REQUEST_RETRIES)
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.tracking_uri)

    def _run(self) -> None:
        client = self._client()
        pause = 0.5
        with open(self.path, encoding="utf-8") as f:
            while True:
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
                        send_line(client, self.run_id, json.loads(line))
                        pause = 0.5
                        break
                    except Exception:  # the server is down, hung or refusing: keep the line, retry it
                        self.failures += 1
                        if self._stop.is_set():
                            f.seek(pos)
                            return
                        self._stop.wait(pause)
                        pause = min(2 * pause, 15.0)
                self._sent += 1

    def close(self, timeout_s: float, unsent_path: str | None = None) -> int:
        """Wait up to ``timeout_s`` for the spool to drain, stop the thread, and write the lines not sent to
        ``unsent_path`` (JSON lines); returns their number."""
        deadline = time.time() + timeout_s
        while self.pending and time.time() < deadline:
            time.sleep(0.1)
        self._stop.set()
        self._wake.set()
        # an attempt in flight ends within the request timeout: after it, the count of sent lines is final
        self._thread.join(timeout=max(0.0, deadline - time.time()) + float(REQUEST_TIMEOUT_S) + 2.0)
        self._out.close()
        left = self.pending
        if left and unsent_path:
            with open(self.path, encoding="utf-8") as f:
                lines = f.readlines()[self._sent:]
            with open(unsent_path, "w", encoding="utf-8") as f:
                f.writelines(lines)
        if not self._thread.is_alive():  # the spool (and its table images) served its purpose
            import shutil

            shutil.rmtree(self.spool_dir, ignore_errors=True)
        return left


# -- omniway sync-metrics -----------------------------------------------------------------------------------
def add_commands(sub, cli) -> None:
    """Add `sync-metrics` to the `omniway` subparsers ``sub``; ``cli`` is `pipelines.cli`."""
    sync = sub.add_parser("sync-metrics", help="send the metrics a training stage kept because MLflow did not "
                                               "take them in time (unsent_metrics.jsonl) to its MLflow run")
    cli.add_pipeline_args(sync)
    sync.add_argument("--stage", action="append", default=[], metavar="STAGE",
                      help="only this stage (repeatable; default: every stage whose output keeps unsent metrics)")
    sync.set_defaults(handler=cmd_sync_metrics)


def unsent_outputs(spec, stages=()) -> list[tuple[str, object]]:
    """(stage name, Manifest) of the committed outputs (current keys) that keep an ``UNSENT_FILE``."""
    from pipelines.runner import current_outputs

    return [(n, m) for n, m in current_outputs(spec, stages)
            if m is not None and any(f["path"] == UNSENT_FILE for f in m.files)]


def cmd_sync_metrics(args) -> int:
    import sys

    from mlflow.tracking import MlflowClient

    from pipelines.cli import load_spec

    spec = load_spec(args)
    found = unsent_outputs(spec, args.stage)
    if not found:
        print("omniway sync-metrics: no stage output keeps unsent metrics")
        return 0
    client = MlflowClient(spec.tracking_uri)
    failed = 0
    for name, m in found:
        with m.open(UNSENT_FILE) as f:
            lines = [json.loads(x) for x in f.read().decode().splitlines() if x.strip()]
        sent = 0
        for item in lines:
            try:
                send_line(client, m.mlflow_run_id, item)
                sent += 1
            except Exception as e:  # e.g. a line an earlier sync already sent: say so and go on
                failed += 1
                print(f"omniway sync-metrics: {name}: a {item['kind']} line was refused ({e})", file=sys.stderr)
        print(f"{name}: sent {sent} of {len(lines)} lines to MLflow run {m.mlflow_run_id}")
    return 1 if failed else 0
