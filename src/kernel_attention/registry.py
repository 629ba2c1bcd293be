"""Name → component registries with typed config dataclasses (the fairseq pattern).

A component class carries a ``Config`` dataclass. ``Registry.make_config(name, params)`` turns a plain
mapping (e.g. what Hydra resolved) into that dataclass, rejecting unknown keys, wrong types and non-finite
numbers (NaN, ±inf: no setting of this project means them) with one line that lists what is allowed, so bad
input fails at startup and never deep inside training.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is invalid. The message is one line and names the fix."""


def _type_ok(value: Any, annotation: Any) -> bool:
    """Loose runtime type check for the simple annotations our configs use."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, Mapping)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _coerce(value: Any, annotation: Any) -> Any:
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _non_finite(value: Any) -> bool:
    """NaN or ±inf anywhere in a value (a float, or the items of a list): never a valid setting here."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v) for v in value)
    return False


def config_from_mapping(cls: type[T], params: Mapping[str, Any], what: str) -> T:
    """Build dataclass ``cls`` from ``params``; unknown keys or wrong types raise ``ConfigError``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for {what}; allowed: {', '.join(sorted(fields)) or 'none'}"
        )
    kwargs = {}
    for key, value in params.items():
        value = _coerce(value, hints[key])
        if _non_finite(value):
            raise ConfigError(f"{what}: option {key}={value!r} must be a finite number")
        if not _type_ok(value, hints[key]):
            tname = getattr(hints[key], "__name__", str(hints[key]))
            raise ConfigError(f"{what}: option {key}={value!r} must be of type {tname}")
        kwargs[key] = value
    return cls(**kwargs)


class Registry(Generic[T]):
    """A named collection of component classes, each with a ``Config`` dataclass attribute."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def deco(cls: type[T]) -> type[T]:
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if not dataclasses.is_dataclass(getattr(cls, "Config", None)):
                raise TypeError(f"{self.kind} {name!r} must define a Config dataclass")
            cls.name = name  # type: ignore[attr-defined]
            self._classes[name] = cls
            return cls

        return deco

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def get(self, name: str) -> type[T]:
        if name not in self._classes:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return self._classes[name]

    def make_config(self, name: str, params: Mapping[str, Any] | None = None) -> Any:
        """The typed config of component ``name`` from a plain mapping (``name`` key ignored)."""
        cls = self.get(name)
        params = {k: v for k, v in (params or {}).items() if k != "name"}
        cfg = config_from_mapping(cls.Config, params, f"{self.kind} {name!r}")  # type: ignore[attr-defined]
        validate = getattr(cfg, "validate", None)
        if callable(validate):
            validate()
        return cfg
