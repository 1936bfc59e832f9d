"""The papers' datasets for the `paper` profile: where each lives on disk, its layout, and the command that
prepares it. A missing dataset raises `DatasetMissingError` naming that command; nothing is fetched silently.

Data root: $CLIPADAPT_DATA, else ~/.cache/clipadapt/data.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from ..utils import read_npy
from .corruptions import check
from .real import DatasetMissingError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple(w.replace("_", " ") for w in """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur
dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster
man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree
plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake
spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle
wardrobe whale willow_tree wolf woman worm""".split())


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str            # sub-folder of the data root
    classes: tuple[str, ...]
    source: str            # where the files come from
    licence: str
    per_severity: int      # images per corruption and severity in the release

    def prepare_command(self, root: Path) -> str:
        return f"python data_scripts/prepare_corruptions.py --dataset {self.name} --root {root}"


DATASETS = {
    "cifar10-c": DatasetSpec("cifar10-c", "CIFAR-10-C", CIFAR10_CLASSES,
                             "Hendrycks & Dietterich (ICLR 2019), Zenodo record 2535967", "CC BY 4.0", 10_000),
    "cifar100-c": DatasetSpec("cifar100-c", "CIFAR-100-C", CIFAR100_CLASSES,
                              "Hendrycks & Dietterich (ICLR 2019), Zenodo record 3555552", "CC BY 4.0", 10_000),
    "imagenet-c": DatasetSpec("imagenet-c", "ImageNet-C", tuple(IMAGENET_CLASSNAMES),
                              "Hendrycks & Dietterich (ICLR 2019), Zenodo record 2235448",
                              "CC BY 4.0 (images under the ImageNet terms of access)", 50_000),
}


def data_root() -> Path:
    return Path(os.environ.get("CLIPADAPT_DATA", Path.home() / ".cache" / "clipadapt" / "data")).expanduser()


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def _order(n_total: int, n: int | None, seed: int | None) -> np.ndarray:
    """Positions of a stream: the release order (seed None) or a seeded shuffle; the first `n` of it."""
    idx = np.arange(n_total) if seed is None else np.random.default_rng(seed).permutation(n_total)
    return idx if n is None else idx[:n]


def _missing(spec: DatasetSpec, root: Path, what: str) -> DatasetMissingError:
    return DatasetMissingError(f"{spec.folder} is not at {root / spec.folder} (missing {what}). Prepare it with\n"
                               f"    {spec.prepare_command(root)}")


def load_cifar_c(name: str, corruption: str, severity: int, root: str | Path | None = None,
                 n: int | None = None, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images n x 32 x 32 x 3, labels) of one corruption and severity from the published .npy release.

    Layout: <root>/<CIFAR-10-C|CIFAR-100-C>/<corruption>.npy holds severities 1-5 in five equal blocks (10,000 test
    images each in the release) and labels.npy the labels in the same order. `seed` shuffles the stream (None keeps
    the release order); `n` keeps its first n images.
    """
    spec = get_spec(name)
    check(corruption, severity)
    root = Path(root) if root is not None else data_root()
    folder = root / spec.folder
    x_path, y_path = folder / f"{corruption}.npy", folder / "labels.npy"
    for p in (x_path, y_path):
        if not p.exists():
            raise _missing(spec, root, p.name)
    fix = f"Delete it and prepare the data again:\n    {spec.prepare_command(root)}"
    x = read_npy(x_path, fix, mmap_mode="r")
    y = read_npy(y_path, fix)
    if len(x) % 5 or len(x) != len(y):
        raise ValueError(f"{x_path} has {len(x)} images and {y_path.name} {len(y)} labels; expected 5 equal severity "
                         "blocks with one label each")
    per = len(x) // 5
    idx = _order(per, n, seed) + (severity - 1) * per
    return np.ascontiguousarray(x[idx]), y[idx].astype(np.int64)


class ImageFiles:
    """A lazy, sliceable sequence of image files read as uint8 RGB arrays (what `preprocess_batch` takes)."""

    def __init__(self, paths: list[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        """An int reads one image; a slice reads a list of them; an array or list of positions is a lazy subset."""
        from PIL import Image
        if isinstance(i, slice):
            return [np.asarray(Image.open(p).convert("RGB")) for p in self.paths[i]]
        if isinstance(i, (list, np.ndarray)):
            return ImageFiles([self.paths[int(k)] for k in i])
        return np.asarray(Image.open(self.paths[i]).convert("RGB"))


def load_imagenet_c(corruption: str, severity: int, root: str | Path | None = None, n: int | None = None,
                    seed: int | None = None) -> tuple[ImageFiles, np.ndarray]:
    """(lazy images, labels) of one ImageNet-C corruption and severity, from the release's folder layout.

    Layout: <root>/ImageNet-C/<corruption>/<severity>/<wnid>/<file>.JPEG, 1,000 wnid folders whose sorted order is
    the ImageNet class index (the order of open_clip's IMAGENET_CLASSNAMES). `n` keeps the first n of the (seeded)
    stream, e.g. n=5000 for the 5,000-image subset; None keeps all 50,000.
    """
    spec = get_spec("imagenet-c")
    check(corruption, severity)
    root = Path(root) if root is not None else data_root()
    folder = root / spec.folder / corruption / str(severity)
    if not folder.is_dir():
        raise _missing(spec, root, f"{corruption}/{severity}")
    wnids = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if len(wnids) != len(spec.classes):
        raise ValueError(f"{folder} has {len(wnids)} class folders; ImageNet-C has {len(spec.classes)} (one per "
                         "ImageNet wnid). Is the extraction complete?")
    files = [(p, k) for k, w in enumerate(wnids) for p in sorted((folder / w).iterdir()) if p.is_file()]
    idx = _order(len(files), n, seed)
    return ImageFiles([files[i][0] for i in idx]), np.array([files[i][1] for i in idx], dtype=np.int64)


def load_corrupted(name: str, corruption: str, severity: int, root: str | Path | None = None, n: int | None = None,
                   seed: int | None = None):
    """One corruption stream of a released benchmark: CIFAR-10-C, CIFAR-100-C or ImageNet-C."""
    get_spec(name)
    if name == "imagenet-c":
        return load_imagenet_c(corruption, severity, root, n, seed)
    return load_cifar_c(name, corruption, severity, root, n, seed)
