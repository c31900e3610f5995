"""Config plumbing: strict dataclass <-> dict, experiment configs and command-line overrides.

Two layers (see STYLE.md): frozen keyword-only dataclasses beside each model (with presets), and
experiment configs in `configs/*.py` whose `get_config()` returns an `ml_collections.ConfigDict`.
Model directories store their model config as plain YAML produced by `to_dict`.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import ml_collections
import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key is unknown, missing or of the wrong type."""


def to_dict(cfg: Any) -> Any:
    """Dataclass (nested) -> plain dict of JSON/YAML-safe values (tuples become lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, where=where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} matches none of {tp}")
    if origin in (tuple, list, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a sequence, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        seq = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(seq) if origin in (tuple, Sequence) else seq
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {args}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict, *, where: str | None = None) -> T:
    """Build dataclass `cls` from a dict; unknown keys, missing keys and wrong types are errors."""
    where = where or cls.__name__
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing key {name!r}")
    return cls(**kwargs)


def save_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_yaml(cls: type[T], path: str | Path) -> T:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


# -------------------------------------------------------------------------- experiment configs


def load_experiment_config(path: str | Path, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Run `get_config()` of a configs/*.py file, then apply `--config.a.b=value` overrides."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    spec = importlib.util.spec_from_file_location(f"glus_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: defines no get_config()")
    cfg = module.get_config()
    apply_overrides(cfg, overrides)
    return cfg


def _parse_value(text: str, current: Any, key: str) -> Any:
    """Parse `text` as the type of the current value (the config's declared type)."""

    def fail(kind: str):
        raise ConfigError(f"--config.{key}: expected {kind}, got {text!r}")

    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        fail("a bool")
    if isinstance(current, (int, float)):
        try:
            return type(current)(text) if isinstance(current, float) else int(text)
        except ValueError:
            fail(type(current).__name__)
    if isinstance(current, str) or current is None:
        return text
    if isinstance(current, (tuple, list)):
        try:  # a Python literal as the configs/*.py files write them: ('a',) or (1, 2)
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            try:  # YAML flow: [a, b]
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                value = None
        if not isinstance(value, (list, tuple)):
            inner = text.strip().strip("()[]")  # a, b  /  (a, b)  /  [a, b] with bare words
            value = [v.strip().strip("'\"") for v in inner.split(",") if v.strip()]
        if current:
            value = [_parse_value(str(v), current[0], key) for v in value]
        return type(current)(value)
    fail(type(current).__name__)


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Apply `--config.a.b=value` (or `a.b=value`) strings; unknown keys and wrong types raise."""
    for item in overrides:
        text = item[len("--config.") :] if item.startswith("--config.") else item
        if "=" not in text:
            raise ConfigError(f"override {item!r}: expected --config.key=value")
        key, raw = text.split("=", 1)
        node = cfg
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise ConfigError(f"--config.{key}: unknown key {'.'.join(parts[: i + 1])!r}")
            node = node[part]
        leaf = parts[-1]
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise ConfigError(f"--config.{key}: unknown key {key!r}")
        node[leaf] = _parse_value(raw, node[leaf], key)
    return cfg
