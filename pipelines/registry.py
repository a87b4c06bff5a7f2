"""Stage kinds: a name, a config dataclass, a code version and a function.

A stage kind is registered once, at import time of the module that defines it
(`pipelines/stages/<kind>.py` for the built-in ones: config, registration and body in one module):

    @stage_kind("corpus", config=CorpusConfig, version="1", num_cpus=0)
    def corpus(ctx: StageContext) -> dict[str, float]:
        ...

The version is part of every cache key of that kind: bump it when the kind's
output changes for the same config and inputs. Modules that register kinds
must stay cheap to import (no ray, torch or pyarrow at module level): the
planner imports them for every `omniway run`, including fully cached ones.

`resolve(config, inputs, where) -> (config, facts)`, optional, runs when the pipeline
loads, upstream stages first: it fills in what an upstream stage already fixes (the
shards' image resolution from the visual tokenizer), raises `ConfigError` naming the
key for a value that contradicts it or for a setting its dataclass cannot check
alone, and returns `facts`, what this stage's output will be like for the stages
below it (the same facts its manifest states once it has run).
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, Callable

# Modules whose import registers the built-in stage kinds. Each must be light.
BUILTIN_STAGE_MODULES: tuple[str, ...] = ("pipelines.stages",)


@dataclass(frozen=True)
class StageKind:
    """One registered stage kind.

    Args:
        name: the name pipelines refer to in `uses:`.
        config: a dataclass type; the stage's `with:` mapping loads into it strictly.
        version: code version, part of every cache key of this kind.
        fn: `fn(ctx: StageContext) -> dict[str, float]` producing the stage output.
        num_cpus: CPUs the Ray task running `fn` reserves. Kinds that only
            orchestrate other Ray work (Ray Data, Ray Train) use 0 so they do
            not hold a CPU their own workers need.
        description: one line for `omniway stages`.
        resolve: `resolve(config, inputs, where) -> (config, facts)` run at load time (see the module
            docs); `inputs`: upstream stage name -> its resolved `pipelines.config.StageSpec`; `where`:
            "FILE: stage 'NAME'" for messages. None: the config as loaded, no facts.
    """

    name: str
    config: type
    version: str
    fn: Callable[[Any], dict[str, float] | None]
    num_cpus: float = 1.0
    description: str = ""
    resolve: Callable[[Any, dict, str], tuple[Any, dict]] | None = None


_KINDS: dict[str, StageKind] = {}


class UnknownStageKind(KeyError):
    pass


def stage_kind(name: str, *, config: type, version: str, num_cpus: float = 1.0,
               description: str = "", resolve: Callable | None = None) -> Callable:
    """Decorator registering `fn` as the stage kind `name` (arguments: see `StageKind`)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"stage kind {name!r}: config must be a dataclass, got {config!r}")

    def register(fn: Callable) -> Callable:
        existing = _KINDS.get(name)
        if existing is not None and (existing.fn.__module__, existing.fn.__qualname__) != (
                fn.__module__, fn.__qualname__):
            raise ValueError(f"stage kind {name!r} is already registered by "
                             f"{existing.fn.__module__}.{existing.fn.__qualname__}")
        first_doc_line = ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        _KINDS[name] = StageKind(name=name, config=config, version=str(version), fn=fn,
                                 num_cpus=float(num_cpus),
                                 description=description or first_doc_line, resolve=resolve)
        return fn

    return register


def load_modules(modules: list[str] | tuple[str, ...] = ()) -> None:
    """Import the built-in stage modules and the given plugin modules."""
    for module in (*BUILTIN_STAGE_MODULES, *modules):
        importlib.import_module(module)


def get_kind(name: str) -> StageKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise UnknownStageKind(name) from None


def all_kinds() -> dict[str, StageKind]:
    return dict(sorted(_KINDS.items()))
