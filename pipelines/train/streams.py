"""Training streams: endless, resumable iterators over a worker's dataset shard.

Each stream cycles epochs of its shard (``iter_torch_batches``, ``drop_last`` so every rank sees the same
number of batches) and knows its position (epoch, batches into the epoch). Resuming re-reads the epoch
and skips that many batches: with ``preserve_order`` (set by the launcher) the split of blocks across
workers is deterministic, so a resumed run sees the same samples at the same steps as an uninterrupted
one (same worker count). Sample order within an epoch is the shards' order: shuffling is the shards
stage's job.

A training stream tells its collate function which epoch it reads (``StreamCollate.at_epoch``): a task with
a ``collate_train(stream, rows, epoch)`` (augmentation, drawn per sample and epoch) gets it there, in Ray
Data's prefetch threads, beside the training step; validation batches go through ``collate`` and are never
augmented.
"""

from __future__ import annotations

from typing import Any, Callable


def stream_collate(task, stream: str):
    """``iter_torch_batches``' collate_fn for one stream: numpy rows -> ``task.collate(stream, rows)``.

    A ``NumpyBatchCollateFn`` rather than a plain function: Ray Data (2.47+) deprecates functions here.
    """
    from ray.data.collate_fn import NumpyBatchCollateFn

    class StreamCollate(NumpyBatchCollateFn):
        def __init__(self, epoch: int | None = None):
            self.epoch = epoch

        def at_epoch(self, epoch: int) -> "StreamCollate":
            """The collate of one training epoch (a training stream calls it each time it opens one)."""
            return StreamCollate(epoch)

        def __call__(self, batch):
            if self.epoch is not None and hasattr(task, "collate_train"):
                return task.collate_train(stream, batch, self.epoch)
            return task.collate(stream, batch)

    return StreamCollate()


class Stream:
    """One training stream on one worker.

    Args:
        shard: the worker's ``DataIterator`` (``ray.train.get_dataset_shard(name)``).
        name: stream name (for errors).
        batch_size: rows per batch.
        collate: numpy rows -> collated batch.
        prefetch: batches prefetched by Ray Data.
        position: ``{"epoch": e, "offset": k}`` to resume from.
    """

    def __init__(self, shard, name: str, batch_size: int, collate: Callable[[dict], Any], prefetch: int = 2,
                 position: dict | None = None):
        self.shard, self.name, self.batch_size, self.collate, self.prefetch = shard, name, batch_size, collate, prefetch
        position = position or {}
        self.epoch, self.offset = int(position.get("epoch", 0)), int(position.get("offset", 0))
        self._it = None

    def position(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def _open(self) -> None:
        collate = self.collate.at_epoch(self.epoch) if hasattr(self.collate, "at_epoch") else self.collate
        self._it = iter(self.shard.iter_torch_batches(batch_size=self.batch_size, collate_fn=collate,
                                                      drop_last=True, prefetch_batches=self.prefetch))
        for _ in range(self.offset):  # resume inside an epoch
            next(self._it)

    def __next__(self):
        for _ in range(2):
            if self._it is None:
                self._open()
            try:
                batch = next(self._it)
                self.offset += 1
                return batch
            except StopIteration:
                empty = self.offset == 0
                self.epoch, self.offset, self._it = self.epoch + 1, 0, None
                if empty:
                    break
        raise RuntimeError(f"training stream {self.name!r} yields no batch of {self.batch_size} rows per "
                           "worker: it has fewer rows than workers x batch size")
