"""The registry of methods: one lowercase hyphenated name per class. The method modules register their classes on
import; `clipadapt.methods` imports them all, so any import of this module finds the registry full."""
from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

from .base import CONFIG, FAMILIES, WEIGHTS, config_from_dict

_REGISTRY: dict[str, type] = {}


def register(name: str, title: str | None = None):
    """Class decorator: the class becomes `build_method(name, ...)`; names are lowercase and hyphenated, once."""
    def deco(cls):
        key = name.lower()
        if key != name or " " in name or "_" in name:
            raise ValueError(f"method names are lowercase and hyphenated: {name!r}")
        if key in _REGISTRY:
            raise ValueError(f"method {key!r} is registered twice")
        if getattr(cls, "family", None) not in FAMILIES:
            raise ValueError(f"method {key!r} has family {getattr(cls, 'family', None)!r}; use one of {FAMILIES}")
        cls.name = key
        cls.title = title or cls.__dict__.get("title") or key
        _REGISTRY[key] = cls
        return cls
    return deco


def known_methods(kind: str | None = None) -> list[str]:
    """Registered names (`kind`: "labelled" or "test-time" for one kind only), sorted."""
    return sorted(k for k, c in _REGISTRY.items() if kind is None or c.kind == kind)


def method_class(name: str) -> type:
    """The class registered as `name`; an unknown name lists the closest ones."""
    key = str(name).lower()
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(f"unknown method {name!r}; {hint}`clipadapt methods` lists all {len(_REGISTRY)}: "
                         f"{', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def build_method(name: str, *args, cfg=None, **options):
    """The method `name` with its config (`cfg`, or field overrides). Test-time methods also take the CLIP they
    wrap: `build_method("batclip", model, tokenizer, classnames, lr=5e-3)`."""
    cls = method_class(name)
    if cls.kind == "test-time":
        if len(args) != 3:
            raise TypeError(f"{name} is a test-time method: build_method({name!r}, model, tokenizer, classnames, ...)")
        if cfg is None:
            cfg = cls.config_class(**options)
        return cls(*args, cfg)
    if args:
        raise TypeError(f"{name} learns from labelled data: build_method({name!r}, **options).apply(backbone, data)")
    return cls(cfg, **options)


def method_table() -> list[dict]:
    """One row per registered method: name, title, kind, family, backbones, chapter, first line of its doc."""
    return [{"name": k, "title": c.title, "kind": c.kind, "family": c.family, "backbones": ", ".join(c.backbones),
             "chapter": c.chapter, "summary": ((c.__doc__ or "").strip().splitlines() or [""])[0]}
            for k, c in sorted(_REGISTRY.items(), key=lambda kv: (kv[1].chapter, kv[0]))]


def load_trained(folder: str | os.PathLike, backbone):
    """A method saved by `Method.save`, put onto a fresh `backbone`: (method, model ready to predict)."""
    import torch

    folder = Path(folder)
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"{folder} has no saved method ({CONFIG} and {WEIGHTS}); save one with "
                                "method.save(model, folder)")
    try:
        desc = json.loads((folder / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{folder / CONFIG} is not a readable saved method ({e}); save the method again") from e
    cls = method_class(desc["method"])
    method = cls(config_from_dict(cls.config_class, desc["config"]))
    method.structure = desc.get("structure") or {}
    model = method.apply(backbone)
    method.load_into(model, torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True))
    return method, model.eval()


