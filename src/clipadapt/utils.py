"""Seeding, the cache folder, progress bars and downloads, shared by every module and data script."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a run with the same seed gives the same numbers on the same machine."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cache_dir() -> Path:
    """The folder for generated assets and weights: $CLIPADAPT_CACHE, else ~/.cache/clipadapt."""
    p = Path(os.environ.get("CLIPADAPT_CACHE", Path.home() / ".cache" / "clipadapt")).expanduser()
    p.mkdir(parents=True, exist_ok=True)
    return p


def progress(iterable=None, **kw):
    """tqdm that works in notebooks and terminals; pass `disable=True` to silence."""
    kw.setdefault("dynamic_ncols", True)
    kw.setdefault("mininterval", 1.0)
    return tqdm(iterable, **kw)


def download(url: str, dest: Path) -> None:
    """Download `url` to `dest` with a progress bar (through a .part file, so an interrupted download is redone)."""
    import urllib.request
    tmp = dest.with_suffix(dest.suffix + ".part")
    with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
        total = int(r.headers.get("Content-Length", 0)) or None
        with progress(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
            while chunk := r.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    tmp.replace(dest)
