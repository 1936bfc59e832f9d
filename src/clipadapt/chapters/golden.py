"""Golden records: every chapter's `ci` numbers kept in the repository (tests/golden/<chapter>.ci.json), so a change
that moves a number is seen even when the claims still hold (open_clip's regression-test style).

A record holds the run's metrics and each claim's per-seed differences and outcome. A new run matches it when every
metric and difference is within the stated tolerance, no metric appears or disappears, and no claim changes its
outcome (unless a golden seed lay within the tolerance of the claim's line). The tolerance is absolute (`abs` in the
metric's unit: 1 point for accuracies and their differences; `abs01` 0.02 for scores between 0 and 1) or relative
(`rel`, 3%), whichever is larger: the same code on another machine may sum floats in another order, and training
carries that into the digits of an accuracy. A chapter whose training is chaotic even on one machine (threads add
floats in another order from run to run) states a wider tolerance in its record, with the spread it measured.
Metrics that measure the machine (times, memory) are not kept. When a change is meant to move the numbers, write the
records again with `clipadapt golden --write` and say in the commit which numbers moved and by how much
(`clipadapt golden` prints it).

Every number trained on `ci` grows from the tiny models, so a record also keeps a sha256 of their contents (tensors
by name, dtype, shape and bytes: torch's checkpoint files differ in bytes between two saves of equal tensors; the
build history, which holds times, is left out). When numbers moved and the models here differ from those the record
was written with (pretrained on another machine, or by changed pretraining code), the comparison says so first.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from pathlib import Path

import torch

from ..layout import ROOT as BOOK_ROOT
from ..models.pretrain import tiny_checkpoint_path
from ..models.seq2seq import LM_DIGEST, tiny_lm_dir
from ..utils import atomic_write
from . import CHAPTERS, get
from .core import Result

# absolute in the metric's unit (points for accuracies and their differences), for 0-1 scores (AUC, shares) `abs01`
TOLERANCE = {"abs": 1.0, "rel": 0.03, "abs01": 0.02, "scores01": "auc|share|fraction"}
MACHINE = re.compile(r"minutes|seconds|s_per|_mb\b|memory|wall|gib|_s\b|time|per_batch|per_image|vs_epoch", re.I)
ROOT = BOOK_ROOT / "tests" / "golden"


def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(str(k).encode())
            _feed(h, obj[k])
    else:
        h.update(repr(obj).encode())


def content_digest(paths: list[Path], root: Path | None = None) -> str:
    """One sha256 over files' contents: a torch file's loaded tensors, any other file's bytes, named relative to
    `root`."""
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update((path.relative_to(root) if root else Path(path.name)).as_posix().encode())
        _feed(h, torch.load(path, map_location="cpu", weights_only=True) if path.suffix == ".pt" else path.read_bytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def assets() -> dict[str, str]:
    """A sha256 of each tiny model's contents in the cache (those not built are left out)."""
    out = {}
    clip = tiny_checkpoint_path()
    if clip.exists():
        out["tiny-clip"] = content_digest([clip])
    lm = tiny_lm_dir()
    if (lm / "visual.pt").exists():
        out["tiny-vl-bart"] = content_digest([p for p in lm.rglob("*") if p.is_file() and not p.name.startswith(".")
                                              and p.name not in (LM_DIGEST, "history.json")], lm)
    return out


def _asset_lines(recorded: dict[str, str]) -> list[str]:
    here = assets()
    moved = [f"{name} {here[name][:12]} here, {sha[:12]} in the record" for name, sha in recorded.items()
             if name in here and here[name] != sha]
    if not moved:
        return []
    return [f"the tiny models differ from those the record was written with ({'; '.join(moved)}): they were "
            "pretrained on another machine or by changed code, and the numbers trained on them move with them. If "
            "their pretraining code did not change, write the records again where CI runs (`clipadapt golden --write`)"]


def record_of(result: Result) -> dict:
    """The golden record of a chapter run: its metrics (without the machine's), claims and the tiny models' sha256."""
    return {"chapter": result.record.notebook, "profile": result.record.profile, "tolerance": TOLERANCE,
            "assets": assets(),
            "metrics": {k: v for k, v in sorted(result.metrics.items()) if not MACHINE.search(k)},
            "claims": {k: {"per_seed": c.per_seed, "outcome": c.outcome, "threshold": c.threshold}
                       for k, c in sorted(result.claims.items())}}


def path_of(chapter_notebook: str, profile: str = "ci", root: Path | None = None) -> Path:
    return (root or ROOT) / f"{chapter_notebook}.{profile}.json"


def write(result: Result, root: Path | None = None) -> Path:
    """Store the run as the chapter's golden record, keeping the tolerance an existing record states."""
    path = path_of(result.record.notebook, result.record.profile, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = record_of(result)
    if path.exists():
        record["tolerance"] = json.loads(path.read_text()).get("tolerance", TOLERANCE)
    text = json.dumps(record, indent=1, ensure_ascii=False) + "\n"
    atomic_write(path, lambda p: p.write_text(text))
    return path


def _close(a: float, b: float, tol: dict, name: str = "") -> bool:
    floor = tol["abs01"] if re.search(tol["scores01"], name, re.I) else tol["abs"]
    return math.isfinite(a) and abs(a - b) <= max(floor, tol["rel"] * abs(b))


def differences(result: Result, root: Path | None = None) -> list[str]:
    """What differs between a run and its golden record, one line each (empty: it matches)."""
    path = path_of(result.record.notebook, result.record.profile, root)
    if not path.exists():
        return [f"no golden record at {path}: write it with `clipadapt golden --write`"]
    gold, new = json.loads(path.read_text()), record_of(result)
    tol = gold.get("tolerance", TOLERANCE)
    out = [f"metric {k!r} is new (not in the golden record)" for k in sorted(set(new["metrics"]) - set(gold["metrics"]))]
    out += [f"metric {k!r} is gone (in the golden record)" for k in sorted(set(gold["metrics"]) - set(new["metrics"]))]
    out += [f"metric {k!r}: {new['metrics'][k]:.4g}, golden {v:.4g} (moved {new['metrics'][k] - v:+.3g})"
            for k, v in gold["metrics"].items() if k in new["metrics"] and not _close(new["metrics"][k], v, tol, k)]
    for k, g in gold["claims"].items():
        c = new["claims"].get(k)
        if c is None:
            out.append(f"claim {k!r} is gone")
        elif c["outcome"] != g["outcome"] and all(abs(d - g.get("threshold", 0.0)) > tol["abs"]
                                                  for d in g["per_seed"]):   # a seed near the line may cross it
            out.append(f"claim {k!r}: {c['outcome']}, golden {g['outcome']}")
        elif len(c["per_seed"]) != len(g["per_seed"]) or not all(
                _close(a, b, tol) for a, b in zip(c["per_seed"], g["per_seed"])):
            out.append(f"claim {k!r}: per seed {[round(x, 3) for x in c['per_seed']]}, golden "
                       f"{[round(x, 3) for x in g['per_seed']]}")
    out += [f"claim {k!r} is new" for k in sorted(set(new["claims"]) - set(gold["claims"]))]
    return _asset_lines(gold.get("assets", {})) + out if out else []


def main(argv: list[str] | None = None) -> int:
    """`clipadapt golden [--write] [CHAPTER ...]`: compare each chapter's ci run (cached, or run now) with its golden
    record and print what moved; `--write` stores the runs as the new records."""
    import argparse

    ap = argparse.ArgumentParser(prog="clipadapt golden", description=main.__doc__)
    ap.add_argument("chapters", nargs="*", help=f"chapters (default: all): {', '.join(CHAPTERS)}")
    ap.add_argument("--write", action="store_true", help="store the runs as the golden records")
    a = ap.parse_args(argv)
    bad = 0
    for name in a.chapters or list(CHAPTERS):
        ch = get(name)
        result = ch.run(ch.setup("ci"))
        if a.write:
            print(f"{name}: wrote {write(result)}")
            continue
        diff = differences(result)
        bad += bool(diff)
        print(f"{name}: " + ("matches its golden record" if not diff else "\n  " + "\n  ".join(diff)))
    return 1 if bad else 0
