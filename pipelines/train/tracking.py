"""Rank-0 metrics: MLflow batches to the stage's run through a background sender (Ray Train V2 has no Tune
callbacks; a step never waits on the server), a progress line, and the loss-curve PNG."""

from __future__ import annotations

import sys
import time


class RunLogger:
    """Logs to the MLflow run ``run_id`` at ``tracking_uri`` through a ``MetricsSender`` (a step never waits
    on the server); with a tracking URI but no run (MLflow did not start it) every line is kept for the
    output; no-op without either.

    Args:
        tracking_uri: MLflow tracking URI.
        run_id: the stage's MLflow run.
        total_steps: for the progress line's ETA.
        spool_dir: where the sender spools (a local directory of this worker).
    """

    def __init__(self, tracking_uri: str | None, run_id: str | None, total_steps: int, spool_dir: str | None = None):
        self.run_id, self.total = run_id, total_steps
        self.sender = None
        if run_id or tracking_uri:  # without a run (MLflow did not start it) every line is kept for the output
            import tempfile

            from pipelines.train.metrics_sender import MetricsSender

            self.sender = MetricsSender(tracking_uri, run_id, spool_dir or tempfile.mkdtemp(prefix="omniway-spool-"))
        self.begin(0)
        self.first_line: tuple[int, float] | None = None  # (step, time) of the first progress line

    def log(self, metrics: dict[str, float], step: int) -> None:
        from pipelines.tracking import metric_values

        if self.sender and metrics:
            self.sender.metrics(metric_values(metrics), step)

    def close(self, timeout_s: float, unsent_path: str) -> int:
        """Let the sender drain for up to ``timeout_s``; what it could not send goes to ``unsent_path``.
        Returns the number of lines left unsent."""
        if not self.sender:
            return 0
        from pipelines.train.metrics_sender import keep_unsent

        sender, self.sender = self.sender, None
        return keep_unsent(sender, timeout_s, unsent_path, "train")

    def begin(self, step: int) -> None:
        """The loop starts stepping at ``step`` (0, or where a resumed run goes on) now."""
        self.start = (step, time.time())

    def eta_s(self, step: int, now: float | None = None) -> float:
        """Seconds left until ``total_steps``: from the first progress line on, at the pace since that line
        (warm-up, compilation and the first batches are behind it); on the first line, at the pace since
        ``begin`` (which includes them, so it errs long)."""
        now = time.time() if now is None else now
        since_step, since = self.first_line if self.first_line and step > self.first_line[0] else self.start
        rate = (step - since_step) / max(now - since, 1e-9)  # steps per second
        return max(self.total - step, 0) / rate if rate > 0 else 0.0

    def progress(self, step: int, metrics: dict[str, float]) -> None:
        now = time.time()
        line = progress_line(step, self.total, metrics, self.eta_s(step, now))
        if self.first_line is None:
            self.first_line = (step, now)
        # straight to stdout: Ray Train patches print() to also log, and the line showed twice
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def table(self, columns: dict[str, list], artifact_file: str) -> None:
        """An MLflow table (``MlflowClient.log_table``: shown in the run's Evaluation / Artifacts views)."""
        if self.sender and columns:
            self.sender.table(columns, artifact_file)

    def artifact(self, path: str, artifact_path: str | None = None) -> None:
        if self.sender:
            self.sender.artifact(path, artifact_path)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")


def progress_line(step: int, total: int, metrics: dict[str, float], eta_s: float) -> str:
    """`[train] step 40/300  loss 2.3151  lr 2.9e-04  tokens/s 1250  data wait 3%  eta 2m10s`."""
    loss = metrics.get("loss")
    return (f"[train] step {step}/{total}  loss {'-' if loss is None else format(loss, '.4f')}  "
            f"lr {metrics.get('lr', 0.0):.1e}  tokens/s {metrics.get('tokens_per_s', 0.0):.0f}  "
            f"data wait {100 * metrics.get('data_wait_share', 0.0):.0f}%  eta {_duration(eta_s)}")


def loss_curve_png(history: list[list[float]], path: str) -> str | None:
    """history: [[step, loss], ...] -> a PNG of the training loss; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h[0] for h in history], [h[1] for h in history], label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
