"""Every adaptation method of the book under one lowercase hyphenated name (`clipadapt methods` lists them).

Two kinds share the registry:
- methods that learn from labelled data (`base.Method`): `build_method(name, **options).apply(backbone, data)`;
- test-time methods (`tta.TTAMethod`), which wrap a CLIP: `build_method(name, model, tokenizer, classnames,
  **options)`, then call it on unlabelled batches.
An unknown name is an error that lists the closest registered names.
"""
from __future__ import annotations

from . import baselines, batclip, contrastive_da, peclip, spt, spt_controls, tpt, tta, vlpet  # noqa: F401
from .registry import build_method, known_methods, load_trained, method_class, method_table, register

__all__ = ["build_method", "known_methods", "load_trained", "method_class", "method_table", "register"]
