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


def log_metrics(client, run_id: str, metrics: dict, step: int = 0) -> None:
    """Log ``metrics`` (``metric_values``) to MLflow run ``run_id``, split at MLflow's batch limit: the one
    synchronous metric writer (stage contexts, the pipeline tracker; the training loop's rank 0 spools
    through ``pipelines.train.metrics_sender``)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, v, now, int(step)) for k, v in metric_values(metrics).items()]
    for i in range(0, len(items), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=items[i:i + MAX_METRICS_PER_BATCH])


def log_artifact(client, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
    """Attach a file to MLflow run ``run_id`` if it exists (a plot that could not be drawn is no error)."""
    if os.path.exists(local_path):
        client.log_artifact(run_id, local_path, artifact_path)


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


def _reported(fn):
    """A bookkeeping call whose failure (the server down, hung, refusing) is reported, not raised: a stage
    output that is committed stays committed whatever MLflow does (``failures`` counts them)."""
    import functools
    import sys

    @functools.wraps(fn)
    def call(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except Exception as e:
            self.failures += 1
            sys.stderr.write(f"omniway: MLflow did not take {fn.__name__} ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); the run goes on\n")
            return None

    return call


class PipelineTracker:
    """The parent run of one pipeline run and its stage children. Past the parent run's creation, a failed
    call is reported and the run goes on (``_reported``): a stage's run id may then be None.

    Args:
        tracking_uri: MLflow tracking URI (sqlite:///..., http://...).
        experiment: experiment name (created on first use).
        run_name: the parent run's name.
    """

    def __init__(self, tracking_uri: str, experiment: str, run_name: str):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        if tracking_uri.startswith("sqlite:///"):
            self.client = _open_sqlite_store(tracking_uri)
        else:
            self.client = MlflowClient(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=_artifact_root(tracking_uri),
                    tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
            except Exception:  # created concurrently by another run
                self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        else:
            self.experiment_id = exp.experiment_id
            if TAG_EXPERIMENT_KIND not in exp.tags:  # made before omniway marked its experiments
                self.client.set_experiment_tag(self.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
        self.parent = self.client.create_run(
            self.experiment_id, run_name=run_name, tags={TAG_PIPELINE: experiment})
        self.parent_id = self.parent.info.run_id
        self.failures = 0

    @_reported
    def log_pipeline(self, resolved_yaml: str, params: dict) -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "pipeline.resolved.yaml")
            Path(path).write_text(resolved_yaml)
            self.client.log_artifact(self.parent_id, path)
        self._log_params(self.parent_id, params)

    def _log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], str(v)[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(run_id, params=items[i:i + 100])

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
