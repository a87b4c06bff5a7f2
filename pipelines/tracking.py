"""MLflow runs of a pipeline run: one parent per `omniway run`, one child per stage.

Everything goes through `MlflowClient` with an explicit tracking URI, never the
fluent global state, so concurrent stages and concurrent runs do not share a
"current run".
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from pipelines.typed import flatten

TAG_STAGE = "omniway.stage"
TAG_KIND = "omniway.kind"
TAG_KEY = "omniway.key"
TAG_CACHE_HIT = "omniway.cache_hit"
TAG_SOURCE_RUN = "omniway.source_run_id"
TAG_PIPELINE = "omniway.pipeline"
TAG_ERROR = "omniway.error"
# What MLflow's UI (3.x) opens an experiment on: the runs table for model training, the GenAI overview
# (traces) otherwise. omniway's experiments are model training.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
UI_HOST = "127.0.0.1"


# MLflow's log_batch takes at most 1000 metrics per call.
MAX_METRICS_PER_BATCH = 1000


def metric_values(metrics: dict) -> dict[str, float]:
    """What of ``metrics`` MLflow takes as metrics, by the names it takes: nested dicts flattened (``a.b``),
    names through ``metric_name``, what is not a number (strings, None, booleans, lists) left out."""
    out = {}
    for key, value in flatten(metrics).items():
        if value is None or isinstance(value, (bool, str)):
            continue
        try:
            out[metric_name(key)] = float(value)
        except (TypeError, ValueError):  # a list, a dict of lists: not a metric
            continue
    return out


def log_metrics(client, run_id: str, metrics: dict, step: int = 0, timestamp_ms: int | None = None) -> None:
    """Log ``metrics`` (``metric_values``) to MLflow run ``run_id``, split at MLflow's batch limit: the one
    metric writer (the pipeline tracker's bookkeeping, `sync-metrics`, and the background sender of what
    stages spool along the way, which passes each line's own ``timestamp_ms``; default: now)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
    items = [Metric(k, v, now, int(step)) for k, v in metric_values(metrics).items()]
    for i in range(0, len(items), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=items[i:i + MAX_METRICS_PER_BATCH])


def metric_name(key: str) -> str:
    """A metric key as MLflow accepts it: `val/text_to_image/r@1` -> `val/text_to_image/r_at_1`.

    MLflow allows alphanumerics and `_-. :/`; every place that logs metrics goes
    through here so the same metric has the same name in every run."""
    key = key.replace("@", "_at_")
    return re.sub(r"[^\w\-. :/]", "_", key)


def _is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def runs_url(tracking_uri: str, experiment_id: str | None, port: int = 5000, run_id: str | None = None) -> str:
    """The MLflow UI page of an experiment's runs (of one run, with ``run_id``): on the tracking server
    itself, or on the `mlflow ui` of ``ui_argv`` (127.0.0.1:``port``) for a local store."""
    base = tracking_uri.rstrip("/") if _is_server(tracking_uri) else f"http://{UI_HOST}:{port}"
    if experiment_id is None:
        return f"{base}/#/experiments"
    # MLflow 3.17 opens an experiment on the workflow the URL names (else the one last chosen, GenAI at first)
    return (f"{base}/#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")
            + "?workflowType=machine_learning")


def ui_argv(tracking_uri: str, port: int = 5000) -> list[str] | None:
    """The command that serves the MLflow UI over a local store on 127.0.0.1:``port`` (None for a tracking
    server: it is its own UI). The `mlflow` next to this Python, so it is the MLflow omniway logs with."""
    if _is_server(tracking_uri):
        return None
    import shutil
    import sys

    exe = os.path.join(os.path.dirname(sys.executable), "mlflow")
    head = [exe] if os.access(exe, os.X_OK) else ([shutil.which("mlflow")] if shutil.which("mlflow")
                                                   else [sys.executable, "-m", "mlflow"])
    # one worker: a UI for one person, up in a quarter of the time of the default four on a small machine
    return head + ["ui", "--backend-store-uri", tracking_uri, "--host", UI_HOST, "--port", str(port),
                   "--workers", "1"]


def ui_command(tracking_uri: str, port: int = 5000) -> str | None:
    """``ui_argv`` as a person types it (`mlflow ui ...`), or None for a tracking server."""
    import shlex

    argv = ui_argv(tracking_uri, port)
    return None if argv is None else shlex.join(["mlflow"] + argv[argv.index("ui"):])


def latest_pipeline_run(tracking_uri: str, experiment: str) -> dict | None:
    """The newest parent run of the pipeline's experiment: {run_id, name, status, experiment_id}, or None."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_PIPELINE}` = '{experiment}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    info = runs[0].info
    return {"run_id": info.run_id, "name": info.run_name, "status": info.status,
            "experiment_id": exp.experiment_id}


def _artifact_root(tracking_uri: str) -> str | None:
    """Artifacts of a local sqlite store go next to the database, not into the cwd."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def _open_sqlite_store(tracking_uri: str):
    """Open (and on first use create) a sqlite store under a file lock: two runs
    starting at once would otherwise both run MLflow's schema migration."""
    import fcntl

    from mlflow.tracking import MlflowClient

    db = Path(tracking_uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            client = MlflowClient(tracking_uri)
            client.search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return client


def open_client(tracking_uri: str):
    """An ``MlflowClient`` of ``tracking_uri`` (a sqlite store is opened, and on first use created, under a
    file lock)."""
    from mlflow.tracking import MlflowClient

    return _open_sqlite_store(tracking_uri) if tracking_uri.startswith("sqlite:///") else MlflowClient(tracking_uri)


def experiment_id(client, tracking_uri: str, experiment: str) -> str:
    """The id of the experiment named ``experiment``, created (marked as model training) on first use."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        try:
            return client.create_experiment(experiment, artifact_location=_artifact_root(tracking_uri),
                                            tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
        except Exception:  # created concurrently by another run
            return client.get_experiment_by_name(experiment).experiment_id
    if TAG_EXPERIMENT_KIND not in exp.tags:  # made before omniway marked its experiments
        client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
    return exp.experiment_id


def log_params(client, run_id: str, params: dict) -> None:
    """Log ``params`` (nested dicts flattened) to run ``run_id``, in MLflow's batches of 100."""
    from mlflow.entities import Param

    items = [Param(k[:250], str(v)[:6000]) for k, v in flatten(params).items()]
    for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        client.log_batch(run_id, params=items[i:i + 100])


def _first_line(e: BaseException, limit: int = 160) -> str:
    """`Type: first line of the message`, the end of a long one (MLflow's name the URL first, the cause last)
    kept."""
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text if len(text) <= limit else '...' + text[-limit:]}"


# consecutive failed bookkeeping calls after which the tracker stops calling MLflow for the rest of the run
# (each costs up to one request timeout on a hung server)
MAX_FAILURES_IN_A_ROW = 3


def _reported(fn):
    """A bookkeeping call whose failure (the server down, hung, refusing) is reported, not raised: a stage
    output that is committed stays committed whatever MLflow does (``failures`` counts them). Offline (the
    parent run could not be made, or ``MAX_FAILURES_IN_A_ROW`` calls failed in a row) nothing is called; a
    call about a stage run that could not be made (``run_id`` None) is skipped."""
    import functools
    import sys

    @functools.wraps(fn)
    def call(self, *args, **kwargs):
        if self.offline or (args and args[0] is None and fn.__name__ in ("finish_stage", "fail_stage")):
            return None
        try:
            result = fn(self, *args, **kwargs)
            self._in_a_row = 0
            return result
        except Exception as e:
            self.failures += 1
            self._in_a_row += 1
            sys.stderr.write(f"omniway: MLflow did not take {fn.__name__} ({_first_line(e)}); the run goes on\n")
            if self._in_a_row >= MAX_FAILURES_IN_A_ROW:
                self.offline = f"{self._in_a_row} calls in a row failed"
                sys.stderr.write(f"omniway: MLflow at {self.tracking_uri} failed {self._in_a_row} calls in a row: the "
                                 "rest of this run is not tracked; what stages log is kept in their outputs "
                                 "(`omniway sync-metrics` sends it)\n")
            return None

    return call


class PipelineTracker:
    """The parent run of one pipeline run and its stage children. MLflow's HTTP calls are bounded
    (``metrics_sender.bounded_http``). When the parent run cannot be made (the server down, hung, refusing)
    the tracker says so once and is ``offline``: the pipeline runs untracked (``parent_id`` None), its
    stages keep what they log in their outputs. Past that, a failed call is reported and the run goes on
    (``_reported``): a stage's run id may then be None.

    Args:
        tracking_uri: MLflow tracking URI (sqlite:///..., http://...).
        experiment: experiment name (created on first use).
        run_name: the parent run's name.
    """

    def __init__(self, tracking_uri: str, experiment: str, run_name: str):
        import sys

        from pipelines.train.metrics_sender import bounded_http

        bounded_http()
        self.tracking_uri = tracking_uri
        self.failures, self._in_a_row = 0, 0
        self.offline: str | None = None
        self.client = self.experiment_id = self.parent = self.parent_id = None
        try:
            self.client = open_client(tracking_uri)
            self.experiment_id = experiment_id(self.client, tracking_uri, experiment)
            self.parent = self.client.create_run(
                self.experiment_id, run_name=run_name, tags={TAG_PIPELINE: experiment})
            self.parent_id = self.parent.info.run_id
        except Exception as e:
            self.offline = _first_line(e)
            self.experiment_id = None
            sys.stderr.write(f"omniway: MLflow at {tracking_uri} could not start this run ({self.offline}): "
                             "it runs untracked; stage outputs are committed as usual and keep what the stages log "
                             "(`omniway sync-metrics` sends it once MLflow answers)\n")

    @_reported
    def log_pipeline(self, resolved_yaml: str, params: dict) -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "pipeline.resolved.yaml")
            Path(path).write_text(resolved_yaml)
            self.client.log_artifact(self.parent_id, path)
        self._log_params(self.parent_id, params)

    def _log_params(self, run_id: str, params: dict) -> None:
        log_params(self.client, run_id, params)

    @_reported
    def start_stage(self, stage: str, kind: str, key: str, config: dict) -> str:
        run = self.client.create_run(self.experiment_id, run_name=stage, tags={
            "mlflow.parentRunId": self.parent_id, TAG_STAGE: stage, TAG_KIND: kind,
            TAG_KEY: key, TAG_CACHE_HIT: "false"})
        self._log_params(run.info.run_id, config)
        return run.info.run_id

    @_reported
    def finish_stage(self, run_id: str, manifest: dict) -> None:
        log_metrics(self.client, run_id, manifest.get("metrics", {}))
        self._log_manifest(run_id, manifest)
        self.client.set_terminated(run_id, "FINISHED")

    @_reported
    def fail_stage(self, run_id: str, error: str) -> None:
        self.client.set_tag(run_id, TAG_ERROR, error[:5000])
        self.client.set_terminated(run_id, "FAILED")

    @_reported
    def cache_hit(self, stage: str, kind: str, key: str, manifest: dict) -> str:
        tags = {"mlflow.parentRunId": self.parent_id, TAG_STAGE: stage, TAG_KIND: kind,
                TAG_KEY: key, TAG_CACHE_HIT: "true"}
        if manifest.get("mlflow_run_id"):
            tags[TAG_SOURCE_RUN] = manifest["mlflow_run_id"]
        run = self.client.create_run(self.experiment_id, run_name=f"{stage} (cached)", tags=tags)
        run_id = run.info.run_id
        self._log_params(run_id, manifest.get("config", {}))
        log_metrics(self.client, run_id, manifest.get("metrics", {}))
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    @_reported
    def finish(self, ok: bool) -> None:
        self.client.set_terminated(self.parent_id, "FINISHED" if ok else "FAILED")

    def _log_manifest(self, run_id: str, manifest: dict) -> None:
        import json
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "_manifest.json")
            Path(path).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            self.client.log_artifact(run_id, path)
