"""A fresh MLflow run on a sqlite store, and a metric's history: for training tests that compare curves."""

from __future__ import annotations


def tracking(tmp_path) -> tuple[str, str]:
    """(tracking URI, run id) of a new run in experiment "t" of ``<tmp_path>/mlflow.db``."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("t") or client.create_experiment("t")
    exp = exp if isinstance(exp, str) else exp.experiment_id
    return uri, client.create_run(exp).info.run_id


def losses(uri: str, run_id: str, key: str = "loss") -> dict[int, float]:
    """step -> value of metric ``key`` of the run."""
    from mlflow.tracking import MlflowClient

    return {m.step: m.value for m in MlflowClient(uri).get_metric_history(run_id, key)}
