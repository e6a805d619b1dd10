"""The one config mechanism: frozen dataclasses built from dicts (JSON files, command-line
arguments) with unknown keys and wrong types named by their dotted key, and KEY=VALUE overrides.

Used by the model config (`pass_jax.config`), the training run config (`pass_jax.train.run_config`),
`BenchSettings` and `EvalSettings`. Imports no JAX.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Callable, Mapping

from .errors import PassJaxError

# check(name, value, dotted key): a caller's extra rule for one value, run after its type check.
Check = Callable[[str, Any, str], None]


class ConfigError(PassJaxError):
    """A configuration that cannot describe a working model or run."""


def build(cls, values: Mapping[str, Any], section: str = "", where: str = "", check: Check | None = None):
    """`cls(**values)` after checking every value against its field's annotation (ints pass as
    floats, bools never as numbers). A dict given for a dataclass field is built the same way, its
    keys named `section.field.key`. `where` names the source (a file) in the errors."""
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(_dotted(section, k) for k in unknown)}"
                          f"{' in ' + where if where else ''}; known{' in ' + section if section else ''}: "
                          f"{', '.join(known)}")
    hints = typing.get_type_hints(cls)
    checked = {key: _checked(value, hints[key], _dotted(section, key), where, check) for key, value in values.items()}
    try:
        return cls(**checked)
    except TypeError as err:  # a required key is missing
        raise ConfigError(f"{where or section or cls.__name__}: {err}") from None


def _dotted(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def _checked(value: Any, hint: Any, key: str, where: str, check: Check | None) -> Any:
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    section = next((t for t in allowed if dataclasses.is_dataclass(t)), None)
    if section is not None and isinstance(value, Mapping):
        return build(section, value, key, where, check)
    if isinstance(value, int) and not isinstance(value, bool) and float in allowed:
        value = float(value)
    if not any(_fits(value, t) for t in allowed):
        raise ConfigError(f"{key} must be {' or '.join(map(_type_name, allowed))}, got {value!r}")
    if check is not None and value is not None:
        check(key.rsplit(".", 1)[-1], value, key)
    return value


def _fits(value: Any, hint: Any) -> bool:
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is tuple:  # tuple[X, ...]: each item an X
        items = typing.get_args(hint)
        return isinstance(value, tuple) and all(_fits(v, items[0]) for v in value)
    if isinstance(value, bool) and hint is not bool:
        return False
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if dataclasses.is_dataclass(hint):
        return "a section (a JSON object)"
    return getattr(hint, "__name__", str(hint))


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.steps=10' -> (['train', 'steps'], 10). Values are JSON, else plain strings."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not KEY=VALUE (e.g. train.steps=10)")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """A copy of a config dict with `key.sub=value` overrides applied (validated when built)."""
    data = json.loads(json.dumps(data))
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
        node[path[-1]] = value
    return data


def to_json(config) -> dict[str, Any]:
    """A dataclass as JSON values: nested dataclasses as dicts, tuples as lists."""
    return json.loads(json.dumps(dataclasses.asdict(config)))
