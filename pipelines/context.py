"""What a stage kind's function receives: config, inputs, a place to write, tracking."""

from __future__ import annotations

import os
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
        run_id: this stage's MLflow run id (None when tracking is off, or MLflow did not start the run:
            then what the stage logs is kept in its output).
        tracking_uri: the MLflow tracking URI to log to (None: tracking is off, logging is a no-op).
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
    _sender: Any = field(default=None, repr=False)
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
    # Through a background sender (pipelines.train.metrics_sender): a call appends to a local spool and
    # returns, whatever MLflow does; what is not sent when the stage ends is kept in its output.
    def _spool(self):
        if self._sender is None and self.tracking_uri:
            from pipelines.train.metrics_sender import MetricsSender

            self._sender = MetricsSender(self.tracking_uri, self.run_id, self.scratch_dir())
        return self._sender

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log metrics to this stage's MLflow run (no-op when tracking is off). What the stage function
        returns is logged by the runner when the stage ends: this is for metrics along the way."""
        from pipelines.tracking import metric_values

        values = metric_values(metrics or {})
        if values and (sender := self._spool()) is not None:
            sender.metrics(values, step or 0)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        """Attach a file (a plot, a table) to this stage's MLflow run, under ``artifact_path``. The file is
        taken at once (the stage may remove it); one that is not there is no error (a plot not drawn)."""
        if (sender := self._spool()) is not None:
            sender.artifact(local_path, artifact_path)

    def log_table(self, columns: dict[str, list], artifact_file: str) -> None:
        """An MLflow table (``MlflowClient.log_table``) as ``artifact_file``; a column may hold PIL images."""
        if columns and (sender := self._spool()) is not None:
            sender.table(columns, artifact_file)

    def close_tracking(self, keep: bool = True, timeout_s: float | None = None) -> int:
        """End this stage's logging: give the sender ``timeout_s`` (default ``STAGE_DRAIN_S``) to send what
        is left, then (``keep``) write what it could not into the output (``UNSENT_FILE``, for `omniway
        sync-metrics`) and say so. Returns the number of lines kept. The runner calls it when the stage
        function returns (``keep``) or raises (the output is discarded, and what was not sent with it)."""
        sender, self._sender = self._sender, None
        if sender is None:
            return 0
        from pipelines.train.metrics_sender import STAGE_DRAIN_S, UNSENT_FILE, keep_unsent

        timeout_s = STAGE_DRAIN_S if timeout_s is None else timeout_s
        if not keep:
            sender.close(timeout_s)
            return 0
        return keep_unsent(sender, timeout_s, os.path.join(self.output_dir, UNSENT_FILE), self.kind)
