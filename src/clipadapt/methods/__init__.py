"""Adaptation methods, registered by lowercase name. Notebooks call `build_method`, not the classes."""
from __future__ import annotations

from typing import Callable

_REGISTRY: dict[str, Callable] = {}


def register(name: str):
    """Class decorator: make a method available as `build_method(name, ...)`; duplicate names are an error."""
    def deco(cls):
        key = name.lower()
        if key in _REGISTRY:
            raise ValueError(f"method {key!r} is registered twice")
        _REGISTRY[key] = cls
        return cls
    return deco


def known_methods() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def build_method(name: str, model, tokenizer, classnames, cfg=None, **overrides):
    """The method `name` around `model` for `classnames`; `cfg` (the method's config dataclass) or field overrides."""
    _load()
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[key]
    cfg = cfg if cfg is not None else cls.config_class(**overrides)
    return cls(model, tokenizer, classnames, cfg)


def _load() -> None:
    from . import batclip, tpt, tta  # noqa: F401  (modules register their methods on import)


__all__ = ["build_method", "known_methods", "register"]
