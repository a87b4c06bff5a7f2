"""What a stage kind's function receives: config, inputs, a place to write, tracking."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

from pipelines.manifest import Manifest


@dataclass
class StageContext:
    """Everything one stage execution may use.

    Args:
        pipeline: pipeline name.
        stage: this stage's name in the pipeline.
        kind: the registered kind name.
        key: the cache key of this execution.
        config: the kind's config dataclass instance (resolved, validated).
        inputs: upstream stage name -> its committed `Manifest`, in `needs` order.
        output_dir: a fresh local directory; everything written here becomes the
            stage output when the function returns without raising.
        run_id: this stage's MLflow run id (None when tracking is off).
        tracking_uri: the MLflow tracking URI to log to.
        storage_uri: the storage root, for stages that write straight to it.
        forced: the user asked for this run although an output for the key exists (``--force``):
            stages that resume (training) start over instead.
    """

    pipeline: str
    stage: str
    kind: str
    key: str
    config: Any
    inputs: dict[str, Manifest]
    output_dir: str
    run_id: str | None = None
    tracking_uri: str | None = None
    storage_uri: str = ""
    forced: bool = False
    # Filled by the stage, read by the runner when it writes the manifest.
    rows: dict[str, int] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: str | None = None
    _client: Any = field(default=None, repr=False)
    _scratch: list[str] = field(default_factory=list, repr=False)

    # -- inputs ------------------------------------------------------------
    def input(self, kind: str) -> Manifest:
        """The one input produced by a stage of `kind` (error if none or several)."""
        found = self.inputs_of_kind(kind)
        if len(found) != 1:
            names = {name: m.kind for name, m in self.inputs.items()}
            raise ValueError(f"stage {self.stage!r} needs exactly one input of kind {kind!r}; "
                             f"its inputs are {names}")
        return found[0]

    def inputs_of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.inputs.values() if m.kind == kind]

    # -- outputs -----------------------------------------------------------
    def set_rows(self, rel_path: str, rows: int, sha256: str | None = None) -> None:
        """Record the row count of one output file (goes into the manifest), and its sha256
        when the stage already has it (the hash of the file's final bytes: a parallel writer
        computes it where it wrote the file, and the runner does not read the file again)."""
        self.rows[rel_path] = int(rows)
        if sha256 is not None:
            self.sha256[rel_path] = sha256

    def scratch_dir(self) -> str:
        """A local temporary directory that is not part of the output; removed when the
        stage ends (`remove_scratch`), so log what it holds before returning."""
        path = tempfile.mkdtemp(prefix=f"omniway-{self.stage}-scratch-")
        self._scratch.append(path)
        return path

    def remove_scratch(self) -> None:
        """Delete every scratch directory this stage made (the runner calls it, whatever
        the stage's outcome)."""
        while self._scratch:
            shutil.rmtree(self._scratch.pop(), ignore_errors=True)

    # -- tracking ----------------------------------------------------------
    @property
    def client(self):
        if self._client is None and self.run_id:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log metrics to this stage's MLflow run (no-op when tracking is off). What the stage function
        returns is logged by the runner when the stage ends: this is for metrics along the way."""
        if not self.client or not metrics:
            return
        from pipelines.tracking import log_metrics

        log_metrics(self.client, self.run_id, metrics, step or 0)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        """Attach a file (a plot, a table) to this stage's MLflow run."""
        if self.client:
            from pipelines.tracking import log_artifact

            log_artifact(self.client, self.run_id, local_path, artifact_path)
