"""One results record per run (JSON), written to results/<notebook>.<profile>.json, and a glue helper.

The book, the reproduction report and the tests read these records; prose reads the same numbers through myst-nb
`glue`. A record holds the metric names and values, the seed, the profile, package versions and the wall time.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

VERSIONED = ("torch", "open_clip_torch", "peft", "numpy", "clipadapt")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in VERSIONED:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


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
    started: float = field(default_factory=time.time)
    wall_time_s: float | None = None

    def log(self, name: str, value: float) -> float:
        self.metrics[name] = float(value)
        return value

    def save(self, root: str | Path | None = None) -> Path:
        """Write <root>/<notebook>.<profile>.json (wall time up to now) and return the path; root defaults to
        $CLIPADAPT_RESULTS, else results/ (tests on stand-in data write elsewhere)."""
        self.wall_time_s = round(time.time() - self.started, 2)
        root = root if root is not None else os.environ.get("CLIPADAPT_RESULTS", "results")
        path = Path(root) / f"{self.notebook}.{self.profile}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False, default=_jsonable))
        return path


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def load_record(notebook: str, profile: str, root: str | Path = "results") -> dict[str, Any]:
    path = Path(root) / f"{notebook}.{profile}.json"
    if not path.exists():
        raise FileNotFoundError(f"no results record at {path}: run notebooks/{notebook}.ipynb with profile={profile!r} "
                                f"first (make book)")
    return json.loads(path.read_text())


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
