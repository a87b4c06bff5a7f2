"""omniway checkpoints: safetensors files with the model config embedded, loaded strictly."""

from __future__ import annotations

import os
from typing import Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .config import ModelConfig

CONFIG_KEY = "omniway_config"


class CheckpointKeyError(KeyError):
    """The checkpoint's keys or shapes do not match the model; the message lists every difference."""

    def __init__(self, missing: list[str], unexpected: list[str], mismatched: list[str], where: str = ""):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        lines = [f"checkpoint does not match the model{(' (' + where + ')') if where else ''}:"]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                lines.append(f"  {label} ({len(keys)}): " + ", ".join(keys))
        super().__init__("\n".join(lines))

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


def check_keys(model: nn.Module, state_dict: Mapping[str, torch.Tensor], where: str = "") -> None:
    """Raise ``CheckpointKeyError`` unless ``state_dict`` has exactly the model's keys and shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if tuple(expected[k].shape) != tuple(state_dict[k].shape)
    )
    if missing or unexpected or mismatched:
        raise CheckpointKeyError(missing, unexpected, mismatched, where)


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], where: str = "") -> None:
    """Load every key or nothing: checks keys and shapes first, so a mismatch never half-loads."""
    check_keys(model, state_dict, where)
    model.load_state_dict(dict(state_dict), strict=True)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, config: ModelConfig | None = None) -> None:
    """Write ``model``'s weights to a safetensors file with its config (JSON) in the metadata."""
    config = config if config is not None else model.config
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, os.fspath(path), metadata={CONFIG_KEY: config.to_json(), "format": "pt"})


def read_checkpoint(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read the config and tensors of an omniway safetensors checkpoint."""
    with safe_open(os.fspath(path), framework="pt") as f:
        meta = f.metadata() or {}
        if CONFIG_KEY not in meta:
            raise ValueError(f"{path}: not an omniway checkpoint (no {CONFIG_KEY!r} in the safetensors metadata)")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return ModelConfig.from_json(meta[CONFIG_KEY]), tensors


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Load a checkpoint strictly; builds the model from the embedded config unless one is given."""
    config, tensors = read_checkpoint(path)
    if model is None:
        model = config.build()
    load_state_dict_strict(model, tensors, where=os.fspath(path))
    return model


def load_torch_weights(path: str | os.PathLike) -> dict:
    """A ``.pt`` / ``.pth`` / ``.bin`` file a user hands in (a published BEiT-3 checkpoint), read with
    ``torch.load(weights_only=True)``: tensors and plain containers only, so unpickling never runs code
    from the file. Anything else is refused with the reason."""
    import pickle

    try:
        return torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{os.fspath(path)}: not a weights-only checkpoint; omniway loads tensors and plain "
                         f"containers only and runs no code from checkpoint files ({str(e).splitlines()[0]})") from None
