"""Typed configs: dataclasses, with YAML files and ``key=value`` overrides on top.

A YAML file holds overrides only; unknown keys are errors (a typo must not silently train the
wrong model). The resolved config is saved into every run folder and checkpoint.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from readtalk.errors import ReadtalkError

T = TypeVar("T")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ReadtalkError(f"config {where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ReadtalkError:
                continue
        raise ReadtalkError(f"config {where}: {value!r} does not fit {tp}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ReadtalkError(f"config {where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, where) for v in value)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if tp is Any:
        return value
    raise ReadtalkError(f"config {where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``cls`` from a (partial) mapping; missing keys keep their defaults."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ReadtalkError(
            f"unknown config key {prefix}{unknown[0]} (known: {', '.join(sorted(fields))})"
        )
    base = cls()  # every config is default-constructible
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        current = getattr(base, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            # a partial nested mapping overrides this field's default, not the class defaults
            kwargs[name] = from_dict(type(current), merge(dataclasses.asdict(current), value), key)
        else:
            kwargs[name] = _coerce(value, hints[name], key)
    return dataclasses.replace(base, **kwargs)


def _scalar(raw: str) -> Any:
    """A value as YAML reads it, except that numbers YAML 1.1 leaves as text (``5e-4``) are
    numbers."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
    return value


def parse_overrides(items: list[str]) -> dict:
    """``["train.lr=3e-4", "model.hidden=128"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ReadtalkError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _scalar(raw)
    return out


def merge(a: dict, b: dict) -> dict:
    """Nested dict ``a`` updated by ``b`` (mappings merge, everything else replaces)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(
    cls: type[T],
    yaml_path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict | None = None,
) -> T:
    """Defaults of ``cls`` <- ``base`` <- YAML file <- ``key=value`` overrides."""
    data: dict = dict(base or {})
    if yaml_path:
        p = Path(yaml_path)
        if not p.is_file():
            raise ReadtalkError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ReadtalkError(f"config file {p} is not valid YAML ({e})") from None
        if not isinstance(loaded, dict):
            raise ReadtalkError(f"config file {p} must hold a mapping")
        data = merge(data, loaded)
    data = merge(data, parse_overrides(overrides or []))
    return from_dict(cls, data)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
