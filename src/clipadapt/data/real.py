"""Real image data that ships offline through package registries: Fashion-MNIST (Debian) and 8x8 digits (sklearn)."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ..utils import BrokenFileError

FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")
DIGIT_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FASHION_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_INSTALL = "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"


class DatasetMissingError(FileNotFoundError):
    """A dataset is not on disk; the message says the command that puts it there."""


def require_files(folder, names, what: str, command: str) -> None:
    """Raise DatasetMissingError naming the missing files of `folder` and the command that prepares them."""
    from pathlib import Path
    missing = [n for n in names if not (Path(folder) / n).exists()]
    if missing:
        raise DatasetMissingError(f"{what} is not at {folder} (missing {', '.join(missing)}). Prepare it with\n"
                                  f"    {command}")


def fashion_mnist_dir() -> Path:
    """Where the Fashion-MNIST idx files are: $CLIPADAPT_FASHION_MNIST or the Debian package's folder."""
    chosen = os.environ.get("CLIPADAPT_FASHION_MNIST")
    if chosen:   # asked for: that folder or an error, never a silent fallback to another copy
        require_files(chosen, [f"{s}-{k}-idx{d}-ubyte.gz" for s in ("train", "t10k")
                               for k, d in (("images", 3), ("labels", 1))],
                      "Fashion-MNIST (CLIPADAPT_FASHION_MNIST)", f"{FASHION_INSTALL}  # or unset CLIPADAPT_FASHION_MNIST")
        return Path(chosen)
    for c in FASHION_DIRS:
        p = Path(c)
        if (p / "t10k-images-idx3-ubyte.gz").exists():
            return p
    raise DatasetMissingError(
        "Fashion-MNIST is not installed. Install the Debian package with\n"
        f"    {FASHION_INSTALL}\n"
        "or point CLIPADAPT_FASHION_MNIST at a folder holding the four *-ubyte.gz files "
        f"(looked in: {', '.join(map(str, FASHION_DIRS))}).")


def _read_idx(path: Path) -> np.ndarray:
    fix = (f"Reinstall it ({FASHION_INSTALL}) or replace the file"
           + (" (CLIPADAPT_FASHION_MNIST points here)." if os.environ.get("CLIPADAPT_FASHION_MNIST") else "."))
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
        ndim = data[3]
        shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
        return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, EOFError, IndexError, ValueError) as e:
        raise BrokenFileError(f"the Fashion-MNIST file {path} is damaged ({type(e).__name__}: {e}). {fix}") from e


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images n x 28 x 28 x 3, int64 labels) of the `train` (60k) or `test` (10k) split."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = fashion_mnist_dir()
    stem = "train" if split == "train" else "t10k"
    x = _read_idx(root / f"{stem}-images-idx3-ubyte.gz")
    y = _read_idx(root / f"{stem}-labels-idx1-ubyte.gz").astype(np.int64)
    return np.repeat(x[..., None], 3, axis=-1), y


def load_digits_rgb() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits as uint8 8x8x3 images (0-16 scaled to 0-255) and labels."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = np.clip(d.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    return np.repeat(x[..., None], 3, axis=-1), d.target.astype(np.int64)
