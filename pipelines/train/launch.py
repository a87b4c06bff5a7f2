"""Driver side of the loop: build the ``TorchTrainer`` for a task and run it to completion.

``fit`` is what a training stage calls. The Ray Train run lives under ``storage_path/name``; calling
``fit`` again with the same two (rerunning an interrupted stage) resumes from its latest checkpoint,
unless ``fresh`` (a forced rerun: ``ctx.forced``) discards that run first. ``FailureConfig(max_failures)``
restarts a run whose worker died, from that checkpoint, by itself.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from pipelines.train.config import TrainConfig
from pipelines.train.loop import EXPORT_DIR, train_loop


@dataclass
class FitResult:
    """What a finished run left: the final reported metrics and the checkpoint path."""

    metrics: dict
    checkpoint: object  # ray.train.Checkpoint

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
        run_id: str | None = None, fresh: bool = False) -> FitResult:
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
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"task": task, "train": train, "tracking_uri": tracking_uri, "run_id": run_id,
                           "dataset_names": sorted(datasets)},
        scaling_config=ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=storage_path,
                             failure_config=FailureConfig(max_failures=train.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=train.keep_checkpoints)),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=train_names, execution_options=options),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {name!r} finished without a checkpoint")
    return FitResult(metrics=dict(result.metrics or {}), checkpoint=result.checkpoint)
