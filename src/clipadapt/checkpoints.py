"""Checkpoints of a chapter's training jobs: per method and seed (and task), the trained weights and the job's
result, so a run that stops part-way resumes where it stopped and a trained adapter can be loaded again.

A `JobStore` is a folder keyed like the chapter's cached result (the set-up and a hash of the package's code, see
`clipadapt.chapters.core.cache_path`): a changed set-up or a changed package never loads stale weights, and CI on a
new commit always trains. Each job is one file `<job>.pt` with the weights of the parameters that trained (what a
method's `trained_state` holds), the job's result row and anything else the chapter keeps (SPT's allocation), beside
`<job>.json` with the row for people to read. Files are written atomically: an interrupted write leaves no job.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .utils import atomic_write


def trained_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters of `model` that require grad, detached on the CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


class JobStore:
    """Trained jobs in `folder` (None: nothing is stored, every job trains)."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder is not None else None

    def path(self, *key) -> Path:
        name = ".".join(re.sub(r"[^A-Za-z0-9_=+-]+", "_", str(k)) for k in key)
        return self.folder / f"{name}.pt"

    def get(self, *key) -> dict | None:
        """The stored job (`{"row": ..., "weights": ..., **extra}`), or None when it has not run."""
        if self.folder is None or not self.path(*key).exists():
            return None
        return torch.load(self.path(*key), map_location="cpu", weights_only=False)   # the project's own files

    def put(self, *key, row: dict, model: nn.Module | None = None, **extra) -> dict:
        """Store a job (its row, the trained weights of `model`, `extra`); returns it as `get` would."""
        job = {"row": row, "weights": trained_weights(model) if model is not None else {}, **extra}
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path(*key), lambda p: torch.save(job, p))
            text = json.dumps(row, indent=1, default=str)
            atomic_write(self.path(*key).with_suffix(".json"), lambda p: p.write_text(text))
        return job

    def run(self, key: tuple, train: Callable[[], tuple[dict, nn.Module | None, dict]]) -> tuple[dict, bool]:
        """The job, read back when stored, else `train()` -> (row, trained model or None, extra things to keep)
        and stored; and whether it was read back (then a caller that needs the model loads `job["weights"]`)."""
        job = self.get(*key)
        if job is not None:
            return job, True
        row, model, extra = train()
        return self.put(*key, row=row, model=model, **extra), False

    def count(self) -> int:
        """How many jobs are stored."""
        return 0 if self.folder is None or not self.folder.exists() else len(list(self.folder.glob("*.pt")))


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """Put stored trained weights into a model built the same way (the method applied to a fresh backbone); a
    weight the model lacks, or of another shape, is an error naming it."""
    params = dict(model.named_parameters())
    missing = sorted(set(weights) - set(params))
    if missing:
        raise KeyError(f"the checkpoint has weights the model lacks: {', '.join(missing[:5])}; build the model with "
                       "the same method and options before loading")
    for n, w in weights.items():   # all checked before any is copied: a refused load changes nothing
        if params[n].shape != w.shape:
            raise ValueError(f"checkpoint weight {n} has shape {tuple(w.shape)}, the model's is "
                             f"{tuple(params[n].shape)}: build the model with the same method and options")
    with torch.no_grad():
        for n, w in weights.items():
            params[n].copy_(w)
    return model
