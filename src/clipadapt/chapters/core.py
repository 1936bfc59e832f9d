"""What every chapter runner shares: set-ups per profile as data, claims with verdicts in both languages, and a result
that is a run record, cached by the set-up and the package's code.

A chapter module defines a frozen `Setup` dataclass, `SETUPS = {"ci": Setup(...), "paper": Setup(...)}` and
`compute(setup, result)`, which fills `result` (tables, metrics, texts to glue, claims, reproduction rows). `run`
calls it once per set-up and code version: the result is written atomically to the cache
(`<cache>/chapters/<chapter>.<profile>.<key>.json`, the run-record format of `clipadapt.results`) and read back by the
next call with the same set-up on the same package code, so the notebook and the claim tests of one `make test` share
one run, and a changed set-up or a changed package never reads an old result. `CLIPADAPT_RERUN=1` ignores the cache.
While a run trains, each job's weights are checkpointed (`Result.jobs`) so a stopped run resumes; once the result is
cached they are removed, unless `CLIPADAPT_KEEP_CHECKPOINTS=1` keeps them (to load a trained adapter later).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ..checkpoints import JobStore
from ..profiles import activate, get_profile
from ..results import RunRecord, glue
from ..utils import atomic_write, cache_dir, seed_everything, spawn_seeds, torch_threads

PACKAGE = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=1)
def code_hash() -> str:
    """A hash of every Python file of the package (paths and bytes): any change to the code changes it."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        h.update(path.relative_to(PACKAGE).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def make_setup(setups: dict[str, Any], profile: str = "ci", **overrides) -> Any:
    """The set-up of `profile` from a chapter's `SETUPS`, with `overrides` (None keeps the profile's value; lists
    become tuples, and one value given for a tuple field a tuple of one). An unknown field is an error that lists
    the fields."""
    prof = get_profile(profile)  # an unknown profile fails here, listing both
    base = setups[prof.name]
    fields = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown set-up field(s) {', '.join(unknown)}: this chapter's set-up has "
                        f"{', '.join(sorted(fields))}")
    given = {k: _as_field(getattr(base, k), v) for k, v in overrides.items() if v is not None}
    return dataclasses.replace(base, **given)


def _as_field(default: Any, value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,) if isinstance(default, tuple) else value


VERDICTS = {  # a claim's verdict from its per-seed differences, in both languages
    "every": ("held on every seed", "すべてのシードで成り立ちました"),
    "some": ("held on some seeds only", "一部のシードでだけ成り立ちました"),
    "none": ("held on no seed", "どのシードでも成り立ちませんでした"),
    "missing": ("was not measured (the rows were not run)", "測っていません(比べる行を実行していません)"),
}


UNITS_JA = {"points": "ポイント"}


@dataclass
class Claim:
    """A claim checked per seed: `per_seed` holds the difference (claimed better minus the reference, in `unit`);
    it holds on a seed when the difference is above `threshold`."""
    key: str
    en: str
    ja: str
    per_seed: list[float]
    threshold: float = 0.0
    unit: str = "points"

    @property
    def held(self) -> list[bool]:
        return [d > self.threshold for d in self.per_seed]

    @property
    def outcome(self) -> str:
        if not self.per_seed:
            return "missing"
        return "every" if all(self.held) else "some" if any(self.held) else "none"

    def verdict(self, lang: str = "en") -> str:
        return VERDICTS[self.outcome][0 if lang == "en" else 1]

    def spread(self, lang: str = "en") -> str:
        """"+3.9 ± 0.3 points" (ja: "+3.9 ± 0.3 ポイント") over the seeds, sample standard deviation."""
        s = pd.Series(self.per_seed, dtype=float)
        unit = self.unit if lang == "en" else UNITS_JA.get(self.unit, self.unit)
        if len(s) > 1:
            return f"{s.mean():+.1f} ± {s.std(ddof=1):.1f} {unit}"
        if len(s):
            return f"{s.mean():+.1f} {unit}" + (" (one seed)" if lang == "en" else "(シード 1 つ)")
        return VERDICTS["missing"][0 if lang == "en" else 1]


@dataclass
class Result:
    """One chapter run: the run record (metrics, tables as rows, texts to glue, claims, reproduction rows) and its
    set-up. Tables come back as DataFrames with `table(name)`."""
    record: RunRecord
    setup: Any
    cached: bool = False

    @property
    def metrics(self) -> dict[str, float]:
        return self.record.metrics

    @property
    def texts(self) -> dict[str, Any]:
        return self.record.info.setdefault("glue", {})

    @property
    def claims(self) -> dict[str, Claim]:
        return {c["key"]: Claim(**c) for c in self.record.info.get("claims", [])}

    def log(self, name: str, value: float, glue_as: str | None = None) -> float:
        """Record a metric (a finite number; NaN or inf is an error naming it); `glue_as` also glues it."""
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{self.record.notebook}: metric {name!r} is {value}; a run must not record a broken "
                             f"number (check the rows it is computed from)")
        self.record.log(name, value)
        if glue_as:
            self.texts[glue_as] = value
        return value

    def text(self, name: str, value: Any) -> Any:
        """A value the prose pastes with {glue:text}`name` (numbers, words, a formatted spread)."""
        self.texts[name] = value.item() if hasattr(value, "item") else value
        return value

    def add_table(self, name: str, df: pd.DataFrame, index: bool = True) -> pd.DataFrame:
        """Keep `df` as the table `name` (its index becomes a column when `index`); returns `df`."""
        flat = df.reset_index() if index else df
        self.record.tables[name] = json.loads(flat.to_json(orient="records", double_precision=15))
        return df

    def table(self, name: str) -> pd.DataFrame:
        """The table `name` as a DataFrame, as recorded (the same whether computed now or read back; set an index
        to pivot)."""
        if name not in self.record.tables:
            raise KeyError(f"{self.record.notebook} has no table {name!r}; it has {', '.join(self.record.tables)}")
        return pd.DataFrame.from_records(self.record.tables[name])

    def claim(self, key: str, en: str, ja: str, per_seed, threshold: float = 0.0, unit: str = "points") -> Claim:
        c = Claim(key, en, ja, [float(d) for d in per_seed], threshold, unit)
        self.record.info.setdefault("claims", [])
        self.record.info["claims"] = [x for x in self.record.info["claims"] if x["key"] != key] + \
            [dataclasses.asdict(c)]
        return c

    def glue(self) -> None:
        """Glue every text and, per claim and language, `<key>_verdict_<lang>` and `<key>_spread_<lang>`."""
        for name, value in self.texts.items():
            glue(name, value)
        for c in self.claims.values():
            for lang in ("en", "ja"):
                glue(f"{c.key}_verdict_{lang}", c.verdict(lang))
                glue(f"{c.key}_spread_{lang}", c.spread(lang))

    def glue_names(self) -> set[str]:
        """Every name `glue` pastes: the texts and each claim's verdict and spread in both languages."""
        return set(self.texts) | {f"{c}_{kind}_{lang}" for c in self.claims for kind in ("verdict", "spread")
                                  for lang in ("en", "ja")}

    @property
    def jobs(self) -> JobStore:
        """Checkpoints of this run's training jobs (per method and seed), keyed like its cached result; with
        `CLIPADAPT_RERUN=1` nothing is read back or kept."""
        if os.environ.get("CLIPADAPT_RERUN") == "1":
            return JobStore(None)
        return JobStore(cache_dir() / "checkpoints" / cache_path(self.record.notebook, self.setup).stem)

    def save(self, root: str | Path | None = None) -> Path:
        """Write the book's record, results/<chapter>.<profile>.json (what the reproduction report reads)."""
        return self.record.save(root, keep_wall_time=True)


def run_seeds(setup: Any) -> list[int]:
    """The seeds of a set-up's `n_seeds` runs (per-seed tables and claims are keyed by them): `spawn_seeds` of its
    `seed`. The first one is the run that single-seed rows and figures use."""
    return spawn_seeds(setup.seed, setup.n_seeds)


def cache_path(chapter: str, setup: Any) -> Path:
    text = json.dumps({"chapter": chapter, "setup": dataclasses.asdict(setup), "code": code_hash()},
                      sort_keys=True, default=str)
    key = hashlib.sha256(text.encode()).hexdigest()[:12]
    return cache_dir() / "chapters" / f"{chapter}.{setup.profile}.{key}.json"


def cached(chapter: str, setup: Any) -> bool:
    """Whether `run` would read this set-up's result back instead of computing it."""
    return cache_path(chapter, setup).exists() and os.environ.get("CLIPADAPT_RERUN") != "1"


def last_wall_time(chapter: str, profile: str) -> float:
    """Seconds the newest cached run of `chapter` on `profile` took (any code version; 0 when none is cached): the
    book build starts the longest chapters first."""
    runs = sorted((cache_dir() / "chapters").glob(f"{chapter}.{profile}.*.json"), key=lambda p: p.stat().st_mtime)
    for path in reversed(runs):
        try:
            return float(json.loads(path.read_text()).get("wall_time_s") or 0.0)
        except (OSError, ValueError):
            continue
    return 0.0


def run(chapter: str, compute: Callable[[Any, Result], None], setup: Any) -> Result:
    """`compute(setup, result)` once per set-up and package code; later calls read the cached record."""
    path = cache_path(chapter, setup)
    if cached(chapter, setup):
        try:
            return Result(RunRecord.from_dict(json.loads(path.read_text())), setup, cached=True)
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            print(f"{path} is unreadable ({e}); running {chapter} again")
    profile = activate(setup.profile)
    seed_everything(setup.seed)
    record = RunRecord(chapter, setup.profile, setup.seed,
                       info={"setup": dataclasses.asdict(setup), "code": code_hash()})
    result = Result(record, setup)
    t0 = time.time()
    with torch_threads(profile.threads):
        compute(setup, result)
    record.wall_time_s = round(time.time() - t0, 2)
    text = record.to_json()
    atomic_write(path, lambda p: p.write_text(text))
    if result.jobs.folder is not None and os.environ.get("CLIPADAPT_KEEP_CHECKPOINTS") != "1":
        shutil.rmtree(result.jobs.folder, ignore_errors=True)   # the finished run is the cached result now
    return result
