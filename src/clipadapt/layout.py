"""Where the book's repository is: its root folder and its chapter notebooks (no heavy imports, so the book, the
terms check, the sweep and the golden records share it without importing each other)."""
from __future__ import annotations

import os
from pathlib import Path


def find_root() -> Path:
    """The book's repository folder: $CLIPADAPT_ROOT; else the checkout of an editable install; else the current
    folder or the nearest parent holding `_toc.yml` and `notebooks/` (a plain `pip install` puts the package in
    site-packages, away from the notebooks); else the package's grandparent (and `notebooks()` says what to do)."""
    if os.environ.get("CLIPADAPT_ROOT"):
        return Path(os.environ["CLIPADAPT_ROOT"]).expanduser().resolve()
    here = Path(__file__).resolve().parents[2]
    if (here / "_toc.yml").exists():
        return here
    for p in [Path.cwd(), *Path.cwd().parents]:
        if (p / "_toc.yml").exists() and (p / "notebooks").is_dir():
            return p
    return here


ROOT = find_root()


def notebooks(root: Path = ROOT) -> list[Path]:
    if not (root / "notebooks").is_dir():
        raise FileNotFoundError(f"no notebooks/ folder under {root}: run from the repository's folder (git clone it) "
                                "or set CLIPADAPT_ROOT to it")
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
