"""Config dataclasses of the `visual-tokenizer` kind (torch-free: the planner imports them).

The architecture (`with.tokenizer`) is `model.vqkd_config.VQKDConfig` itself -- one definition, in
`model/`, used by the model and by this stage alike. `model/vqkd_config.py` imports only the standard
library; it is loaded here by file path, without running `model/__init__.py` (which imports torch,
which the planner must not pay for), and registered under its real module name, so `TokenizerArch is
model.visual_tokenizer.VQKDConfig` whichever of the two is imported first.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

from pipelines.train.config import TrainConfig


def light_model_module(name: str):
    """`model.<name>` (a module of `model/` that imports only the standard library) without
    importing the `model` package when it is not imported yet. Registered as `model.<name>`: when
    the package is imported later, its own `from .<name> import ...` finds this very module."""
    full = f"model.{name}"
    if full in sys.modules:
        return sys.modules[full]
    if "model" in sys.modules:  # torch is loaded already: the plain import costs nothing more
        return importlib.import_module(full)
    pkg = importlib.util.find_spec("model")  # locates the package without executing it
    path = os.path.join(list(pkg.submodule_search_locations)[0], f"{name}.py")
    spec = importlib.util.spec_from_file_location(full, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[full] = module  # before executing: dataclasses resolve annotations through it
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[full]
        raise
    return module


# The tokenizer architecture; see `model.vqkd_config.VQKDConfig` for each field. `image_resolution`
# must equal `image_resolution` of every `shards` stage this tokenizer feeds, and its patch grid the
# pretraining model's (checked at load time by `pipelines.visual_tokenizer.checks`).
TokenizerArch = light_model_module("vqkd_config").VQKDConfig


@dataclass
class VisualTokenizerConfig:
    """Config of the `visual-tokenizer` kind.

    Args:
        tokenizer: architecture (its grid must match the shards and the pretraining model).
        train: the shared training loop's settings (steps, micro_batch_size = images per worker
            per step, lr, workers...).
        max_images: at most this many train images (0 = all), in corpus order.
        val_images: at most this many val images for usage / reconstruction metrics (0 = all).
        cache_decoded: decode and resize the images once and keep the pixels in Ray's object store
            (small corpora); false re-decodes every epoch (streaming, for corpora that do not fit).
        shuffle_seed: the train images are shuffled once with this seed (None: corpus order).
        teacher: "module:function" returning a frozen torch module (float pixels (B, 3, R, R) in
            [-1, 1] -> (B, N, target_dim)); required when tokenizer.target is "teacher".
        encode_batch_size: images per forward when tokenizing (shards, validation).
        plot_samples: images in the reconstruction artifact (0 = none).
    """

    tokenizer: TokenizerArch = field(default_factory=TokenizerArch)
    train: TrainConfig = field(default_factory=TrainConfig)
    max_images: int = 0
    val_images: int = 256
    cache_decoded: bool = True
    shuffle_seed: Optional[int] = 0
    teacher: Optional[str] = None
    encode_batch_size: int = 32
    plot_samples: int = 8

    def __post_init__(self) -> None:
        if self.tokenizer.target == "teacher" and not self.teacher:
            raise ValueError("tokenizer.target is 'teacher': set teacher to 'module:function'")
        if self.teacher and ":" not in self.teacher:
            raise ValueError(f"teacher {self.teacher!r}: expected 'module:function'")
