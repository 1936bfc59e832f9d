"""MM-IMDb (Arevalo et al., 2017) as the contrastive-adaptation chapter's `paper` profile uses it: the authors' code
(margaeor/emb-adapt-cl, `main_mmimdb.py`) classifies Drama against Comedy from a movie's plot and poster.

Layout of the official archive, unpacked by `data_scripts/prepare_mmimdb.py`: <root>/mmimdb/dataset/<id>.json (with
"genres" and "plot" lists) and <root>/mmimdb/dataset/<id>.jpeg. Kept: movies whose genres hold exactly one of Drama
and Comedy (label 0 drama, 1 comedy); the text is the first plot summary.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .listings import Domain
from .real import DatasetMissingError
from .registry import ImageFiles, data_root

CLASSES = ("drama", "comedy")


def mmimdb_root(root=None) -> Path:
    return (Path(root) if root is not None else data_root()) / "mmimdb"


def load_mmimdb(root=None) -> Domain:
    """Drama-vs-Comedy movies of MM-IMDb: posters (read lazily), first plot summaries and labels, sorted by id."""
    folder = mmimdb_root(root) / "dataset"
    if not folder.is_dir():
        raise DatasetMissingError(
            f"MM-IMDb is not at {folder}. Download and unpack it with\n"
            f"    python data_scripts/prepare_mmimdb.py --root {mmimdb_root(root).parent}")
    paths, texts, labels = [], [], []
    for meta in sorted(folder.glob("*.json")):
        m = json.loads(meta.read_text())
        hit = [g for g in ("Drama", "Comedy") if g in m.get("genres", [])]
        poster = meta.with_suffix(".jpeg")
        if len(hit) != 1 or not m.get("plot") or not poster.exists():
            continue
        paths.append(poster), texts.append(str(m["plot"][0])), labels.append(0 if hit[0] == "Drama" else 1)
    if not labels:
        raise DatasetMissingError(f"no Drama-or-Comedy movie with a plot and a poster under {folder}; is the archive "
                                  "fully unpacked?")
    return Domain("MM-IMDb drama vs comedy", ImageFiles(paths), texts, np.array(labels, dtype=np.int64))


def folds(n: int, k: int = 5, seed: int = 42) -> np.ndarray:
    """A random fold (0..k-1) per row, as the authors' `load_data_mmimdb` assigns them (test on fold 0)."""
    return np.random.default_rng(seed).integers(k, size=n)
