"""Driver side of the loop: build the ``TorchTrainer`` for a task and run it to completion.

``fit_stage(ctx, task, train)`` is what a training stage calls: it owns where the Ray Train run lives
(``<storage>/<pipeline>/<stage>/_train/<key>``), resume and fresh starts, and copying the task's export
into the stage output. ``fit`` is the same for callers without a stage (benchmarks, tests). Calling
either again for the same run (rerunning an interrupted stage) resumes from its latest checkpoint,
unless ``fresh`` (a forced rerun: ``ctx.forced``) discards that run first. ``FailureConfig(max_failures)``
restarts a run whose worker died, from that checkpoint, by itself.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

from pipelines.train.config import TrainConfig
from pipelines.train.loop import EXPORT_DIR, train_loop


@dataclass
class FitResult:
    """What a finished run left: the final reported metrics and the checkpoint path."""

    metrics: dict
    checkpoint: object  # ray.train.Checkpoint
    files: list[str] = field(default_factory=list)  # the export's files, once copied (fit_stage)

    @property
    def checkpoint_path(self) -> str:
        return self.checkpoint.path

    def copy_export(self, dest: str) -> list[str]:
        """Copy the task's export (weights, configs, loss curve) from the final checkpoint to ``dest``."""
        copied = []
        with self.checkpoint.as_directory() as d:
            src = os.path.join(d, EXPORT_DIR)
            if not os.path.isdir(src):
                raise RuntimeError(f"the final checkpoint {self.checkpoint_path} has no {EXPORT_DIR}/")
            for name in sorted(os.listdir(src)):
                shutil.copy2(os.path.join(src, name), os.path.join(dest, name))
                copied.append(name)
        return copied


def train_storage_path(ctx) -> str:
    """The Ray Train storage root of a stage: ``<storage>/<pipeline>/<stage>/_train`` (absolute for a
    local storage: Ray Train wants an absolute path or a URI). Stable per stage, and the run inside it is
    named by the stage key, so rerunning an interrupted stage resumes its run."""
    root = ctx.storage_uri.rstrip("/")
    if "://" not in root:
        root = os.path.abspath(root)
    return f"{root}/{ctx.pipeline}/{ctx.stage}/_train"


def fit_stage(ctx, task, train: TrainConfig, *, export_to: str | None = None) -> FitResult:
    """Run ``task`` for the stage of ``ctx`` and copy its export into the stage output.

    Args:
        ctx: the stage's ``StageContext`` (storage, key, MLflow run, ``forced``).
        task: the ``TrainTask``.
        train: loop settings (the stage config's ``train``).
        export_to: directory the export is copied into (default ``ctx.output_dir``).
    Returns:
        the ``FitResult``; ``result.files`` lists the copied file names. The manifest's
        ``extra.train_run`` records where the run lives and its final checkpoint.
    """
    import ray

    from pipelines.data.raycompat import wait_for_free_cpu

    wait_for_free_cpu(ray, ctx.stage)  # the task's read jobs start in fit; see wait_for_free_cpu
    storage_path = train_storage_path(ctx)
    # rank 0 spools its metrics in the stage's scratch: a worker group Ray Train restarts finds there what the
    # dead rank 0 had not sent
    result = fit(task, train, name=ctx.key, storage_path=storage_path, tracking_uri=ctx.tracking_uri,
                 run_id=ctx.run_id, fresh=ctx.forced, spool_dir=ctx.scratch_dir())
    dest = export_to or ctx.output_dir
    os.makedirs(dest, exist_ok=True)
    result.files = result.copy_export(dest)
    ctx.extra["train_run"] = {"storage_path": storage_path, "name": ctx.key,
                              "checkpoint": result.checkpoint_path}
    return result


def discard_run(storage_path: str, name: str) -> bool:
    """Delete the Ray Train run ``storage_path/name`` (a local path or a pyarrow filesystem URI) if there
    is one; True if it was there."""
    import pyarrow.fs as pafs

    if "://" in storage_path:
        fs, root = pafs.FileSystem.from_uri(storage_path)
    else:
        fs, root = pafs.LocalFileSystem(), os.path.abspath(storage_path)
    path = f"{root.rstrip('/')}/{name}"
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return False
    fs.delete_dir(path)
    return True


def fit(task, train: TrainConfig, *, name: str, storage_path: str, tracking_uri: str | None = None,
        run_id: str | None = None, fresh: bool = False, spool_dir: str | None = None) -> FitResult:
    """Run ``task`` with the one loop.

    Args:
        task: a ``TrainTask``; ``task.check()`` runs first, in the driver.
        train: loop settings.
        name: Ray Train run name (stable per stage key, so a rerun resumes).
        storage_path: Ray Train storage root (a local path or a URI every node can reach).
        tracking_uri, run_id: the MLflow run rank 0 logs to.
        fresh: delete ``storage_path/name`` first: train from step 0 even if a run (finished or not)
            is there. A forced stage passes ``ctx.forced``; otherwise rerunning a finished run would
            only resume at its last step and return the same weights.
        spool_dir: where rank 0's metrics sender spools what the tracking server has not taken, for every
            worker group of this call (a restarted rank 0 goes on with the dead one's lines); default: a
            temporary directory, removed when the call returns. It is a path of this machine: a rank 0 on
            another node spools under the same path there.
    Raises:
        ray.train.TrainingFailedError: the run failed more than ``max_failures`` times.
    """
    import ray
    import ray.train
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    task.check()
    if fresh:
        discard_run(storage_path, name)
    datasets = task.datasets()
    train_names = [n for n in datasets if n.startswith("train-")]
    # preserve_order: blocks go to workers in a fixed order, so resume replays the same samples
    options = ray.data.ExecutionOptions(preserve_order=True)
    resources = {"CPU": train.cpus_per_worker}
    if train.use_gpu:
        resources["GPU"] = 1
    own_spool = spool_dir is None
    if own_spool:
        import tempfile

        spool_dir = tempfile.mkdtemp(prefix="omniway-spool-")
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"task": task, "train": train, "tracking_uri": tracking_uri, "run_id": run_id,
                           "dataset_names": sorted(datasets), "spool_dir": spool_dir},
        scaling_config=ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=storage_path,
                             failure_config=FailureConfig(max_failures=train.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=train.keep_checkpoints)),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=train_names, execution_options=options),
    )
    try:
        result = trainer.fit()
    finally:
        if own_spool:
            shutil.rmtree(spool_dir, ignore_errors=True)
    if result.checkpoint is None:
        raise RuntimeError(f"training run {name!r} finished without a checkpoint")
    return FitResult(metrics=dict(result.metrics or {}), checkpoint=result.checkpoint)
