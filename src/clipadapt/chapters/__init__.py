"""Chapters as code: one module per paper chapter and the arena, each with set-ups per profile as data
(`SETUPS`, `setup(profile, **overrides)`) and `run(setup)` returning a `core.Result` (tables, metrics, claims with
verdicts in both languages, reproduction rows: one run record, cached by set-up and code). A notebook sets its
parameters, calls `run`, glues the result and draws its figures.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from difflib import get_close_matches
from multiprocessing import get_context

from ..profiles import get_profile
from ..utils import progress
from . import arena, backbone, batclip, contrastive_da, core, costs, own_images, peclip, spt, vlpet
from .core import Claim, Result

CHAPTERS = {"backbone": backbone, "peclip": peclip, "vlpet": vlpet, "contrastive-da": contrastive_da,
            "batclip": batclip, "spt": spt, "arena": arena, "own-images": own_images,
            "costs": costs}   # in the book's order


# the order to start chapters in when no earlier run says how long they take (a fresh machine): longest first, as
# measured on ci with one thread each (arena about 16 min, PE-CLIP 12, SPT 11, VL-PET 8, BATCLIP 7)
LONGEST_FIRST = ("arena", "peclip", "spt", "vlpet", "batclip", "own-images", "costs", "contrastive-da", "backbone")


def get(name: str):
    """The chapter module called `name`; an unknown name lists the chapters."""
    if name not in CHAPTERS:
        close = get_close_matches(name, CHAPTERS, n=3)
        raise KeyError(f"no chapter {name!r}{' (did you mean ' + ', '.join(close) + '?)' if close else ''}; the "
                       f"chapters are {', '.join(CHAPTERS)}")
    return CHAPTERS[name]


def _run_one(name: str, profile: str) -> float:
    """One chapter's default run on `profile` in a worker process (its progress bars off: the parent shows one)."""
    os.environ["TQDM_DISABLE"] = "1"
    ch = get(name)
    t0 = time.time()
    ch.run(ch.setup(profile))
    return time.time() - t0


def prepare(profile: str = "ci", names=None, jobs: int | None = None, show_progress: bool = True) -> dict[str, float]:
    """Run every chapter's default set-up on `profile` into the cache, side by side, so that the notebooks and the
    claim tests then read their results.

    `jobs` chapters run at once (default: as many as the profile's threads per run fit the machine's cores, so two on
    a 2-core machine for ci, one for paper); the longest cached last time start first. Chapters already cached are
    skipped. Returns the seconds each computed chapter took. A failing chapter stops the rest and is named."""
    names = list(CHAPTERS) if names is None else [n for n in names if get(n)]
    prof = get_profile(profile)
    todo = [n for n in names if not core.cached(get(n).NAME, get(n).setup(profile))]
    todo.sort(key=lambda n: (-core.last_wall_time(get(n).NAME, profile),
                             LONGEST_FIRST.index(n) if n in LONGEST_FIRST else len(LONGEST_FIRST)))
    jobs = min(jobs or prof.parallel_runs(), len(todo))
    seconds: dict[str, float] = {}
    if jobs <= 1:   # in this process, with each chapter's own progress bars
        for n in todo:
            t0 = time.time()
            get(n).run(get(n).setup(profile))
            seconds[n] = time.time() - t0
        return seconds
    bar = progress(total=len(todo), desc=f"chapters on {profile}, {jobs} at a time", disable=not show_progress)
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        running = {pool.submit(_run_one, n, profile): n for n in todo}
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                name = running.pop(fut)
                try:
                    seconds[name] = fut.result()
                except Exception as e:
                    for other in running:
                        other.cancel()
                    raise RuntimeError(f"chapter {name!r} failed on {profile}: {type(e).__name__}: {e}") from e
                bar.update(1)
                bar.set_postfix_str(f"{name} took {seconds[name]:.0f} s")
    bar.close()
    return seconds


__all__ = ["CHAPTERS", "Claim", "Result", "core", "get", "prepare"]
