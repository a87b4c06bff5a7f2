"""Strict conversion of plain data (YAML, JSON) into typed dataclasses: the one config loader of omniway.

Unknown keys, missing required keys and wrong types are a ``ConfigError`` that names the key path
(``with.model.vision.patch_sise: unknown key (known keys: ...)``). Supported field types: bool, int,
float, str, ``X | None``, ``list[X]``, ``tuple[X, ...]``, ``dict[str, X]``, ``Literal[...]``, ``Any`` and
nested dataclasses (given as a mapping or as an instance). Nothing is evaluated: values are data, never
code. A ``ValueError`` / ``TypeError`` raised by a dataclass's ``__post_init__`` becomes a ``ConfigError``
naming the dataclass's path.

Standard library only: the pipeline planner loads model and stage configs with it without importing torch.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal, Union


class ConfigError(ValueError):
    """A config problem found before any work starts; the message names the key."""


def type_name(tp: Any) -> str:
    """``list[SourceConfig]`` for ``list[pipelines.stages.corpus.SourceConfig]``: names, not module paths."""
    if isinstance(tp, type):
        return tp.__name__
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", str(tp))


def convert(tp: Any, value: Any, path: str) -> Any:
    """Convert ``value`` to type ``tp``, raising ConfigError naming ``path``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return convert(option, value, path)
            except ConfigError as e:
                errors.append(str(e))
        if len(options) == 1:
            raise ConfigError(errors[0])
        raise ConfigError(f"{path}: expected {type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, path)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        item = args[0] if args else Any
        items = [convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        kt, vt = args if args else (str, Any)
        return {convert(kt, k, f"{path}.<key>"): convert(vt, v, f"{path}.{k}")
                for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported config type {type_name(tp)}")


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from mapping ``data`` strictly (None: every default).

    Args:
        cls: a dataclass type.
        data: a mapping of field name -> plain value.
        path: the key path of ``data`` for messages ("" at the top).
    """
    if data is None:
        data = {}
    where = path or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = f"{path}.{unknown[0]}" if path else str(unknown[0])
        raise ConfigError(f"{key}: unknown key (known keys: {', '.join(fields) or 'none'})")
    kwargs = {}
    for name, f in fields.items():
        key_path = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = convert(hints[name], data[name], key_path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key_path}: required key is missing")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # a __post_init__ check
        raise ConfigError(f"{where}: {e}") from None


def to_dict(obj: Any) -> Any:
    """A dataclass as plain data (lists, dicts, scalars), for hashing and saving."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def merge(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` applied; nested mappings merge key by key (``{vision: {patch_size: 8}}``
    changes one field of ``vision``), anything else replaces."""
    out = dict(base)
    for key, value in overrides.items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = to_dict(value)
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


__all__ = ["ConfigError", "convert", "from_dict", "merge", "to_dict", "type_name"]
