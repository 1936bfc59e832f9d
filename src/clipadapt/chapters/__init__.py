"""Chapters as code: one module per paper chapter and the arena, each with set-ups per profile as data
(`SETUPS`, `setup(profile, **overrides)`) and `run(setup)` returning a `core.Result` (tables, metrics, claims with
verdicts in both languages, reproduction rows: one run record, cached by set-up and code). A notebook sets its
parameters, calls `run`, glues the result and draws its figures.
"""
from __future__ import annotations

from difflib import get_close_matches

from . import arena, backbone, batclip, contrastive_da, core, costs, peclip, spt, vlpet
from .core import Claim, Result

CHAPTERS = {"backbone": backbone, "peclip": peclip, "vlpet": vlpet, "contrastive-da": contrastive_da,
            "batclip": batclip, "spt": spt, "arena": arena, "costs": costs}   # in the book's order


def get(name: str):
    """The chapter module called `name`; an unknown name lists the chapters."""
    if name not in CHAPTERS:
        close = get_close_matches(name, CHAPTERS, n=3)
        raise KeyError(f"no chapter {name!r}{' (did you mean ' + ', '.join(close) + '?)' if close else ''}; the "
                       f"chapters are {', '.join(CHAPTERS)}")
    return CHAPTERS[name]


__all__ = ["CHAPTERS", "Claim", "Result", "core", "get"]
