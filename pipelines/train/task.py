"""``TrainTask``: what a training stage plugs into the one loop (see ``pipelines.train`` docs)."""

from __future__ import annotations

from typing import Any, Iterable


class TrainTask:
    """Base class of training tasks. The object is built in the driver and pickled to every worker, so
    keep it to plain settings (configs, manifests): build Ray datasets in ``datasets`` and models in
    ``build_model``, never in ``__init__``.

    Streams: ``datasets()`` returns named Ray datasets. Names ``train-<stream>`` are training streams,
    split across workers; each step draws ``stream_batch_sizes()[stream]`` rows from every training
    stream on every worker (so every rank runs the same code path: required by ZeRO-3 and by collectives
    inside objectives). Other names (``val-<stream>``; no "/" in names: Ray Data uses them in log file paths) are given whole to every worker for ``validate``.
    """

    # -- driver side -----------------------------------------------------------------------------------
    def check(self) -> None:
        """Validate inputs before any worker starts (missing files, schema versions...); raise clearly."""

    def datasets(self) -> dict[str, Any]:
        """name -> ``ray.data.Dataset`` (see class docs for the naming)."""
        raise NotImplementedError

    # -- worker side -----------------------------------------------------------------------------------
    def stream_batch_sizes(self) -> dict[str, int]:
        """training stream -> rows per worker per micro step."""
        raise NotImplementedError

    def build_model(self, train) -> Any:
        """The ``nn.Module`` DeepSpeed wraps; ``forward(batch)`` returns ``{"loss": scalar, <part>: ...}``.
        ``train`` is the ``TrainConfig`` (activation checkpointing flag...). Same init on every rank:
        the loop seeds torch before calling it. Under ZeRO-3 the loop registers the (module, parameter)
        pairs returned by the module's optional ``external_parameters()``
        (``deepspeed.zero.register_external_parameter``): tied weights used outside their owner, and
        parameters of modules that return something other than tensors, tuples, lists or dicts (ZeRO-3's
        backward hooks only find tensors in those, so such a module's own parameters are not gathered
        for backward)."""
        raise NotImplementedError

    def collate(self, stream: str, batch: dict) -> Any:
        """numpy rows of one stream -> tensors (runs in Ray Data's prefetch thread)."""
        raise NotImplementedError

    def prepare(self, batch: dict[str, Any], *, step: int, rank: int, device, dtype) -> Any:
        """stream -> collated batch  =>  the module's input, on ``device``; float inputs in ``dtype``.
        Randomness (masks) must come from (seed, step, rank) so a resumed run repeats it."""
        raise NotImplementedError

    def batch_stats(self, batch: Any, num_params: int) -> dict[str, float]:
        """``samples``, ``tokens`` and ``flops`` (model FLOPs of forward + backward) of one micro batch on one
        worker; also any per-stream composition counts (logged as ``mix/<stream>``). ``batch``: what
        ``prepare`` takes ({stream: collated batch}, on the host), so counting never waits for the device."""
        raise NotImplementedError

    def validate(self, module, streams: dict[str, Iterable], *, step: int, device, dtype) -> dict[str, float]:
        """Run on every rank with the same data (whole val streams); returns metrics (rank 0's are logged).
        ``streams``: name -> a fresh iterable of collated batches."""
        return {}

    def validation_tables(self) -> dict[str, dict[str, list]]:
        """After ``validate``, on rank 0: table name -> columns (equal-length lists; a column may hold PIL
        images, logged as images) to attach to the stage's MLflow run, e.g. generated answers beside their
        references. Each validation logs its own copy (``<name>_step<N>.json``)."""
        return {}

    def export(self, module, out_dir: str) -> list[str]:
        """Rank 0, weights gathered: write consolidated fp32 weights (and configs) to ``out_dir``;
        return the file names written."""
        raise NotImplementedError
