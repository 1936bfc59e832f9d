"""Sweeps: a file of chapter x configuration x seed expands to papermill runs, run here or by a scheduler.

    python -m clipadapt.sweep list   sweeps/batclip.yaml          # the runs and which are done
    python -m clipadapt.sweep run    sweeps/batclip.yaml          # run the unfinished ones, one per visible GPU
    python -m clipadapt.sweep slurm  sweeps/batclip.yaml > job.sh  # a Slurm job array, one task per run
    python -m clipadapt.sweep commands sweeps/batclip.yaml        # one command per unfinished run, for any scheduler
    python -m clipadapt.sweep gather sweeps/batclip.yaml          # every finished run's metrics in one CSV

A sweep file (YAML):

    profile: paper
    out: runs/batclip              # run folders, relative to the sweep file
    notebooks: ../notebooks        # optional; default: the repository's notebooks/
    runs:
      - notebook: 04_batclip       # notebooks/<name>.ipynb
        seeds: [0, 1, 2]
        grid:                      # every combination of these parameter values
          datasets: [[cifar10-c], [cifar100-c]]
        params: {n_images: 5000}   # the same for every run of this entry

Each run executes its notebook with papermill into `<out>/<run>/`, with its own results folder
(CLIPADAPT_RESULTS=<out>/<run>/results, which the reproduction page reads through its `results_root` parameter), and
writes `done.json` when it finishes. A run with `done.json` is never run again, so an interrupted sweep resumes by
running the same command; a failed run leaves `error.txt` and is retried next time.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import queue
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path

from .layout import ROOT
from .profiles import get_profile
from .utils import atomic_write, progress, read_json


@dataclass(frozen=True)
class Run:
    index: int
    notebook: Path
    params: dict
    folder: Path

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def done(self) -> bool:
        return (self.folder / "done.json").exists()


def _slug(value) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", json.dumps(value) if not isinstance(value, str) else value).strip("-")


def check_entry(sweep_file: Path, entry: dict, notebook: Path) -> None:
    """An entry's parameters must be the notebook's own (papermill reads them), grid values lists, seeds a list of
    integers given by `seeds:` only: a misspelt name or a lone string would otherwise run the defaults silently."""
    import papermill
    where = f"{sweep_file}: {notebook.stem}"
    params, grid, seeds = entry.get("params") or {}, entry.get("grid") or {}, entry.get("seeds", [0])
    if not isinstance(params, dict) or not isinstance(grid, dict):
        raise ValueError(f"{where}: `params` and `grid` map parameter names to values")
    known = set(papermill.inspect_notebook(str(notebook))) - {"profile"}
    for key in [*params, *grid]:
        if key in ("seed", "profile"):
            by = "`seeds:` list" if key == "seed" else "file's `profile:`"
            raise ValueError(f"{where}: `{key}` is set by the sweep ({by}), not in `params` or `grid`")
        if key not in known:
            close = get_close_matches(key, known, n=1)
            raise ValueError(f"{where}: the notebook has no parameter {key!r}"
                             f"{f' (did you mean {close[0]!r}?)' if close else ''}; its parameters are "
                             f"{', '.join(sorted(known))}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: grid values of {key!r} must be a non-empty list, e.g. [{values!r}], got "
                             f"{values!r}")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise ValueError(f"{where}: `seeds` must be a non-empty list of integers, got {seeds!r}")


def expand(sweep_file: str | Path) -> list[Run]:
    """The runs a sweep file describes, in a stable order (the index of a Slurm array task)."""
    import yaml
    sweep_file = Path(sweep_file)
    try:
        spec = yaml.safe_load(sweep_file.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"{sweep_file} is not valid YAML{where}: {getattr(e, 'problem', None) or e} (indent with "
                         "spaces, not tabs; close every [ and {)") from e
    if not isinstance(spec, dict):
        raise ValueError(f"{sweep_file}: a sweep file is a mapping with `runs:` (a list of entries with a `notebook`) "
                         f"and optionally `profile:` and `out:`; this one holds {type(spec).__name__}")
    profile = spec.get("profile", "ci")
    get_profile(profile)
    out = (sweep_file.parent / spec.get("out", sweep_file.stem)).resolve()
    notebooks_dir = (sweep_file.parent / spec["notebooks"]).resolve() if "notebooks" in spec else ROOT / "notebooks"
    known = sorted(p.stem for p in notebooks_dir.glob("*.ipynb"))
    runs: list[Run] = []
    for entry in spec.get("runs") or []:
        name = entry.get("notebook")
        if name not in known:
            raise ValueError(f"{sweep_file}: unknown notebook {name!r}; choose one of {known}")
        grid = entry.get("grid") or {}
        check_entry(sweep_file, entry, notebooks_dir / f"{name}.ipynb")
        for values in itertools.product(*grid.values()):
            for seed in entry.get("seeds", [0]):
                params = {"profile": profile, "seed": seed, **(entry.get("params") or {}), **dict(zip(grid, values))}
                label = "_".join(f"{k}={_slug(v)}" for k, v in zip(grid, values))
                folder = out / "_".join(filter(None, [name, label, f"seed={seed}"]))
                runs.append(Run(len(runs), notebooks_dir / f"{name}.ipynb", params, folder))
    if not runs:
        raise ValueError(f"{sweep_file}: no runs (it needs a `runs:` list of entries with a `notebook`)")
    if len({r.folder for r in runs}) != len(runs):
        raise ValueError(f"{sweep_file}: two entries describe the same run; make their parameters differ")
    return runs


def run_one(run: Run, gpu: str | None = None, timeout: int | None = None) -> bool:
    """Execute one run with papermill in a fresh process (pinned to `gpu` when given); True when it finished."""
    if run.done:
        return True
    import yaml
    run.folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CLIPADAPT_RESULTS": str(run.folder / "results")}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    cmd = [sys.executable, "-m", "papermill", str(run.notebook), str(run.folder / run.notebook.name),
           "-y", yaml.safe_dump(run.params), "--cwd", str(ROOT), "-k", "python3", "--no-progress-bar"]
    if timeout:
        cmd += ["--execution-timeout", str(timeout)]
    t0 = time.time()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        (run.folder / "error.txt").write_text(res.stdout[-20000:] + "\n" + res.stderr[-20000:])
        return False
    (run.folder / "error.txt").unlink(missing_ok=True)
    done = json.dumps({"params": run.params, "seconds": round(time.time() - t0, 1), "gpu": gpu}, indent=1)
    atomic_write(run.folder / "done.json", lambda p: p.write_text(done))
    return True


def visible_gpus() -> list[str]:
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g]
    import torch
    return [str(i) for i in range(torch.cuda.device_count())]


def run_all(runs: list[Run], gpus: list[str] | None = None, workers: int | None = None) -> list[Run]:
    """Run the unfinished runs, one at a time per GPU (or `workers` at once on the CPU); returns the failed ones."""
    todo = [r for r in runs if not r.done]
    gpus = visible_gpus() if gpus is None else gpus
    slots: queue.Queue = queue.Queue()
    for g in gpus or [None] * (workers or 1):
        slots.put(g)

    def work(run: Run) -> tuple[Run, bool]:
        gpu = slots.get()
        try:
            return run, run_one(run, gpu)
        finally:
            slots.put(gpu)

    failed = []
    with ThreadPoolExecutor(max_workers=slots.qsize()) as pool, \
            progress(total=len(todo), desc="sweep", unit="run") as bar:
        for run, ok in pool.map(work, todo):
            failed += [] if ok else [run]
            bar.update()
    return failed


def commands(sweep_file: str | Path, runs: list[Run]) -> list[str]:
    return [f"{Path(sys.executable).name} -m clipadapt.sweep run-one {Path(sweep_file).resolve()} --index {r.index}"
            for r in runs if not r.done]


def slurm_script(sweep_file: str | Path, runs: list[Run], time_limit: str = "24:00:00", partition: str | None = None,
                 gpus_per_task: int = 1) -> str:
    """A Slurm job array with one task per run; finished runs exit at once, so resubmitting resumes the sweep."""
    lines = ["#!/bin/bash", f"#SBATCH --job-name=clipadapt-{Path(sweep_file).stem}", f"#SBATCH --array=0-{len(runs) - 1}",
             f"#SBATCH --gpus-per-task={gpus_per_task}", f"#SBATCH --time={time_limit}",
             f"#SBATCH --output={runs[0].folder.parent}/slurm-%A_%a.out"]
    lines += [f"#SBATCH --partition={partition}"] if partition else []
    lines += ["set -euo pipefail", f"cd {ROOT}",
              f"python -m clipadapt.sweep run-one {Path(sweep_file).resolve()} --index $SLURM_ARRAY_TASK_ID"]
    return "\n".join(lines) + "\n"


def gather(runs: list[Run]):
    """One row per (run, metric) of every finished run: its parameters, the metric and its value (a DataFrame)."""
    import pandas as pd
    rows = []
    for r in runs:
        if not r.done:
            continue
        for path in sorted((r.folder / "results").glob("*.json")):
            rec = read_json(path, f"Delete {r.folder} and run the sweep again to redo that run.")
            if not isinstance(rec, dict) or not isinstance(rec.get("metrics"), dict):
                raise ValueError(f"{path} is not a run record (no `metrics`): delete {r.folder} and run the sweep "
                                 "again to redo that run")
            for metric, value in rec["metrics"].items():
                rows.append({"run": r.name, "notebook": rec["notebook"], **r.params, "metric": metric,
                             "value": value})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m clipadapt.sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=["list", "run", "run-one", "commands", "slurm", "gather"])
    ap.add_argument("sweep", help="the sweep file (YAML)")
    ap.add_argument("--index", type=int, help="run-one: which run (0-based, as `list` numbers them)")
    ap.add_argument("--gpus", help="run: GPU ids to use, e.g. 0,1 (default: every visible GPU)")
    ap.add_argument("--workers", type=int, default=1, help="run without GPUs: runs at once on the CPU")
    ap.add_argument("--time", default="24:00:00", help="slurm: time limit per run")
    ap.add_argument("--partition", help="slurm: partition")
    a = ap.parse_args(argv)
    runs = expand(a.sweep)
    if a.cmd == "list":
        for r in runs:
            print(f"{r.index:4d}  {'done' if r.done else 'todo'}  {r.name}")
    elif a.cmd == "run":
        failed = run_all(runs, gpus=a.gpus.split(",") if a.gpus else None, workers=a.workers)
        for r in failed:
            print(f"failed: {r.name} (see {r.folder / 'error.txt'})")
        sys.exit(1 if failed else 0)
    elif a.cmd == "run-one":
        if a.index is None or not 0 <= a.index < len(runs):
            raise SystemExit(f"--index must be between 0 and {len(runs) - 1} for {a.sweep}")
        ok = run_one(runs[a.index])
        sys.exit(0 if ok else f"failed: {runs[a.index].name} (see {runs[a.index].folder / 'error.txt'})")
    elif a.cmd == "commands":
        print("\n".join(commands(a.sweep, runs)))
    elif a.cmd == "slurm":
        print(slurm_script(a.sweep, runs, a.time, a.partition), end="")
    else:
        table = gather(runs)
        out = runs[0].folder.parent / "results.csv"
        table.to_csv(out, index=False)
        print(f"{len(table)} rows from {sum(r.done for r in runs)} of {len(runs)} runs: {out}")


if __name__ == "__main__":
    main()
