"""The papers' datasets for the `paper` profile: where each lives on disk, its layout, and the command that
prepares it. A missing dataset raises `DatasetMissingError` naming that command; nothing is fetched silently.

Data root: $CLIPADAPT_DATA, else ~/.cache/clipadapt/data.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .corruptions import check
from .real import DatasetMissingError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple("""apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
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

    def prepare_command(self, root: Path) -> str:
        return f"python data_scripts/prepare_cifar_c.py --dataset {self.name} --root {root}"


DATASETS = {
    "cifar10-c": DatasetSpec("cifar10-c", "CIFAR-10-C", CIFAR10_CLASSES,
                             "Hendrycks & Dietterich (ICLR 2019), Zenodo record 2535967", "CC BY 4.0"),
    "cifar100-c": DatasetSpec("cifar100-c", "CIFAR-100-C", CIFAR100_CLASSES,
                              "Hendrycks & Dietterich (ICLR 2019), Zenodo record 3555552", "CC BY 4.0"),
}


def data_root() -> Path:
    return Path(os.environ.get("CLIPADAPT_DATA", Path.home() / ".cache" / "clipadapt" / "data")).expanduser()


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def load_cifar_c(name: str, corruption: str, severity: int, root: str | Path | None = None,
                 n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images n x 32 x 32 x 3, labels) of one corruption and severity from the published .npy release.

    Layout: <root>/<CIFAR-10-C|CIFAR-100-C>/<corruption>.npy holds severities 1-5 in five equal blocks (10,000 test
    images each in the release) and labels.npy the labels in the same order.
    """
    spec = get_spec(name)
    check(corruption, severity)
    root = Path(root) if root is not None else data_root()
    folder = root / spec.folder
    x_path, y_path = folder / f"{corruption}.npy", folder / "labels.npy"
    if not (x_path.exists() and y_path.exists()):
        raise DatasetMissingError(f"{spec.folder} is not at {folder} (missing {x_path.name if not x_path.exists() else y_path.name}). "
                                  f"Prepare it with\n    {spec.prepare_command(root)}")
    x = np.load(x_path, mmap_mode="r")
    y = np.load(y_path)
    if len(x) % 5 or len(x) != len(y):
        raise ValueError(f"{x_path} has {len(x)} images and {y_path.name} {len(y)} labels; expected 5 equal severity "
                         "blocks with one label each")
    per = len(x) // 5
    sl = slice((severity - 1) * per, (severity - 1) * per + (per if n is None else min(n, per)))
    return np.ascontiguousarray(x[sl]), y[sl].astype(np.int64)
