"""Strict conversion of plain YAML data into typed dataclasses.

Unknown keys, missing required keys and wrong types are errors that name the
key path. Supported field types: bool, int, float, str, `X | None`,
`list[X]`, `tuple[X, ...]`, `dict[str, X]`, `Literal[...]`, `Any` and nested
dataclasses. Nothing is evaluated: values are data, never code.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union


class ConfigError(ValueError):
    """A config problem found before any work starts; the message names the key."""


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def convert(tp: Any, value: Any, path: str) -> Any:
    """Convert `value` to type `tp`, raising ConfigError naming `path`."""
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
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
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
    raise ConfigError(f"{path}: unsupported config type {_type_name(tp)}")


def from_dict(cls: type, data: Any, path: str) -> Any:
    """Build dataclass `cls` from mapping `data` strictly."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}: unknown key (known keys: {', '.join(fields) or 'none'})"
                          if path else f"{unknown[0]}: unknown key (known keys: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        key_path = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = convert(hints[name], data[name], key_path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key_path}: required key is missing")
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:  # a __post_init__ check
        raise ConfigError(f"{path or cls.__name__}: {e}") from None
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass as plain data (lists, dicts, scalars), for hashing and saving."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}` (lists keep their index)."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(data, list) and data and any(isinstance(v, (dict, list)) for v in data):
        for i, v in enumerate(data):
            out.update(flatten(v, f"{prefix}.{i}"))
    else:
        out[prefix] = data
    return out


def describe_fields(cls: type) -> list[tuple[str, str, str]]:
    """(name, type, default) rows for `omniway stages`."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(to_dict(f.default_factory()))
        else:
            default = "(required)"
        rows.append((f.name, _type_name(hints[f.name]), default))
    return rows
