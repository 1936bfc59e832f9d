"""One results record per run (JSON), written to results/<notebook>.<profile>.seed<seed>.json, and a glue helper.

The book, the reproduction report (`reproduction_report`, one row format for every chapter's published numbers) and
the tests read these records; prose reads the same numbers through myst-nb
`glue`. A record holds the metric names and values, the seed, the profile, package versions and the wall time.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import platform
import re
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .profiles import get_profile
from .utils import atomic_write, read_json

VERSIONED = ("torch", "open_clip_torch", "peft", "numpy", "clipadapt")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in VERSIONED:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def machine() -> dict[str, str]:
    """Where a run ran: the machine and its accelerator (the reproduction report's environment column)."""
    import torch
    return {"machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores",
            "accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"}


@dataclass
class RunRecord:
    """The results of one notebook run. `metrics` maps a metric name to a number (state the unit in the name)."""
    notebook: str
    profile: str
    seed: int
    metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=versions)
    machine: dict[str, str] = field(default_factory=machine)
    started: float = field(default_factory=time.time)
    wall_time_s: float | None = None

    def log(self, name: str, value: float) -> float:
        """Record a metric; a value that is not a finite number is refused with the metric's name."""
        number = as_number(value)
        if number is None or not math.isfinite(number):
            raise ValueError(f"metric {name!r} is {value!r}: a broken number is not recorded (a NaN or infinity "
                             "usually means training diverged or a set was empty)")
        self.metrics[name] = number
        return value

    def reproduce(self, quantity: str, published, source: str, ours=None, tolerance: float = 1.0,
                  licence: bool = False, count: bool = False) -> dict[str, Any]:
        """Add a row to this run's "reproduction" table (see `reproduction_row`) and return it."""
        row = reproduction_row(self.notebook, quantity, published, source, ours, tolerance, licence, count)
        self.tables.setdefault("reproduction", []).append(row)
        return row

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, ensure_ascii=False, default=_jsonable)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunRecord":
        """The record a `to_json` wrote (a key it does not know is an error)."""
        return cls(**d)

    def save(self, root: str | Path | None = None, keep_wall_time: bool = False) -> Path:
        """Write <root>/<notebook>.<profile>.json and return the path; root defaults to $CLIPADAPT_RESULTS, else
        results/ (tests on stand-in data write elsewhere). The wall time is the time up to now, unless
        `keep_wall_time` (a chapter runner's record already holds the time its run took)."""
        if not (keep_wall_time and self.wall_time_s is not None):
            self.wall_time_s = round(time.time() - self.started, 2)
        root = root if root is not None else os.environ.get("CLIPADAPT_RESULTS", "results")
        path = record_path(root, self.notebook, self.profile, self.seed)
        text = self.to_json()
        try:
            atomic_write(path, lambda p: p.write_text(text))
        except PermissionError as e:
            raise PermissionError(f"cannot write the run record {path}: the folder is not writable. Set "
                                  "CLIPADAPT_RESULTS to a writable folder (or pass root=) and run again") from e
        return path


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def as_number(value: Any) -> float | None:
    """A Python, NumPy or 0-d torch number as a float; None for anything else (words, None, bools)."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def record_path(root: str | Path, notebook: str, profile: str, seed: int = 0) -> Path:
    """<root>/<notebook>.<profile>.seed<seed>.json: one file per notebook, profile and seed."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", str(notebook)):
        raise ValueError(f"a record's notebook name is a plain name such as '05_spt', got {notebook!r}")
    return Path(root) / f"{notebook}.{profile}.seed{int(seed)}.json"


def load_record(notebook: str, profile: str, root: str | Path = "results", seed: int = 0) -> dict[str, Any]:
    path = record_path(root, notebook, profile, seed)
    if not path.exists():
        raise FileNotFoundError(f"no results record at {path}: run notebooks/{notebook}.ipynb with profile={profile!r} "
                                f"first (make book)")
    return read_json(path, f"Run notebooks/{notebook}.ipynb again to write it anew.")


def glue(name: str, value: Any, display: bool = False) -> Any:
    """myst-nb `glue` (the book pastes the value with {glue:text}`name`); a no-op outside a notebook kernel."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()  # NumPy/torch scalars as Python numbers, so {glue:text}`name:.1f` can format them
    try:
        from myst_nb import glue as _glue
    except ImportError:  # e.g. a plain Python run without the book extras
        return value
    _glue(name, value, display=display)
    return value


# ---------------------------------------------------------------------------------------------------------------------
# the reproduction report: every chapter's published numbers next to its own, one row format for all chapters

STATUSES = ("reproduced within tolerance", "differs", "not run on this profile", "data needs a licence",
            "no published number to compare", "count matches the architecture", "count differs")


def reproduction_row(chapter: str, quantity: str, published, source: str, ours=None, tolerance: float = 1.0,
                     licence: bool = False, count: bool = False) -> dict[str, Any]:
    """One row of the reproduction report. `published` is the paper's number (or its words, when it gives no
    number), `ours` this run's value of the same quantity (None or NaN: not measured on this run). Status: within
    `tolerance` (absolute, in the quantity's unit) of the published number, or not; when not measured, "data needs a
    licence" if the dataset must be requested (`licence`), else "not run on this profile". A `count` (a number of
    trainable parameters, which the architecture fixes) is "count matches the architecture" or "count differs",
    apart from reproduced results."""
    if tolerance is not None and not tolerance >= 0:
        raise ValueError(f"tolerance must be 0 or more (in the quantity's unit), got {tolerance!r}")
    if as_number(published) is not None:
        published = as_number(published)
    if ours is not None:
        if as_number(ours) is None:
            raise TypeError(f"ours must be a number (or None when not measured), got {ours!r} for {quantity!r}")
        ours = as_number(ours)
    measured = ours is not None and math.isfinite(ours)
    numeric = isinstance(published, float)
    if not measured:
        status = STATUSES[3] if licence else STATUSES[2]
    elif not numeric:
        status = STATUSES[4]
    else:
        close = abs(float(ours) - float(published)) <= tolerance
        status = (STATUSES[5] if close else STATUSES[6]) if count else (STATUSES[0] if close else STATUSES[1])
    return {"chapter": chapter, "quantity": quantity, "published": published, "ours": ours if measured else None,
            "tolerance": tolerance if numeric else None, "source": source, "status": status}


def reproduction_report(root: str | Path = "results", profile: str = "ci",
                        seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(rows, environment) gathered from every record of `profile` under `root` that has a "reproduction" table;
    environment: one entry per record (notebook, when it ran, how long, the machine and the versions). A missing
    folder or an unknown profile is an error, not an empty report."""
    get_profile(profile)
    if not Path(root).is_dir():
        raise FileNotFoundError(f"no results folder at {root}: build the book first (make book) or give the folder "
                                "the chapters saved their records in")
    rows, env = [], []
    for path in sorted(Path(root).glob(f"*.{profile}.seed{int(seed)}.json")):
        rec = read_json(path, "Delete it and run its notebook again (make book).")
        table = rec.get("tables", {}).get("reproduction")
        if not table:
            continue
        rows += table
        env.append({"notebook": rec["notebook"], "profile": rec["profile"],
                    "ran": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(rec["started"])),
                    "wall time (s)": rec.get("wall_time_s"), **rec.get("machine", {}), **rec.get("versions", {})})
    return rows, env
