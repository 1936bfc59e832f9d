"""FGVC, the fine-grained half of SPT's benchmark (paper profile): CUB-200-2011, NABirds, Oxford Flowers, Stanford
Dogs and Stanford Cars, with the train / val / test split sizes of VPT (Jia et al., ECCV 2022), which SPT and NOAH
follow: the official test split; val is 10% of the official train split (Flowers: its official val split).

Each dataset is unpacked from its official archive (`data_scripts/prepare_fgvc.py`) into <root>/fgvc/<name>/source/
and described by three files <root>/fgvc/<name>/{train,val,test}.json, each a {"relative/image/path": label} map
with paths relative to <root>/fgvc/<name>/ and labels 0..k-1. The converters below read each release's own
annotation files; `load_fgvc` reads the JSON maps as a `clipadapt.data.vtab.Task` of lazily read images (group
"fgvc").
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .real import require_files
from .registry import ImageFiles, data_root
from .vtab import Task

# name -> (number of classes, what the source folder of the official release holds)
FGVC = {
    "cub": (200, "CUB_200_2011/ with images.txt, image_class_labels.txt, train_test_split.txt, images/"),
    "nabirds": (555, "nabirds/ with images.txt, image_class_labels.txt, train_test_split.txt, images/"),
    "oxford_flowers": (102, "jpg/, imagelabels.mat, setid.mat"),
    "stanford_dogs": (120, "Images/, train_list.mat, test_list.mat"),
    "stanford_cars": (196, "cars_train/, cars_test/, devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat"),
}
VAL_FRACTION, SPLIT_SEED = 0.1, 0


def fgvc_root(root=None) -> Path:
    return (Path(root) if root is not None else data_root()) / "fgvc"


def _check(name: str) -> None:
    if name not in FGVC:
        raise ValueError(f"unknown FGVC dataset {name!r}; the five are: {', '.join(FGVC)}")


def _hold_out_val(train: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    keys = sorted(train)
    val = set(np.random.default_rng(SPLIT_SEED).permutation(len(keys))[: round(VAL_FRACTION * len(keys))].tolist())
    return ({k: train[k] for i, k in enumerate(keys) if i not in val},
            {k: train[k] for i, k in enumerate(keys) if i in val})


def _cub_format(src: Path, prefix: str) -> tuple[dict, dict]:
    """CUB-200-2011 and NABirds: images.txt (id path), image_class_labels.txt (id class), train_test_split.txt
    (id is_train); NABirds' class ids are not contiguous, so both map sorted ids to 0..k-1."""
    table = lambda f: dict(ln.split(maxsplit=1) for ln in (src / f).read_text().split("\n") if ln.strip())
    paths, labels, is_train = table("images.txt"), table("image_class_labels.txt"), table("train_test_split.txt")
    index = {c: i for i, c in enumerate(sorted(set(labels.values()), key=int))}
    train, test = {}, {}
    for i, p in paths.items():
        (train if is_train[i].strip() == "1" else test)[f"{prefix}/images/{p.strip()}"] = index[labels[i]]
    return train, test


def convert(name: str, source: Path) -> dict[str, dict[str, int]]:
    """The {train, val, test} maps of one dataset from its unpacked official release in `source` (paths relative to
    the parent of `source`, i.e. starting with "source/")."""
    from scipy.io import loadmat

    _check(name)
    source = Path(source)
    pre = source.name
    needs = {"oxford_flowers": ("jpg", "imagelabels.mat", "setid.mat"),
             "stanford_dogs": ("Images", "train_list.mat", "test_list.mat"),
             "stanford_cars": ("cars_train", "cars_test", "devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat")}
    require_files(source, needs.get(name, ()), f"the {name} release",
                  f"python data_scripts/prepare_fgvc.py --dataset {name} --root {source.parent.parent.parent}")
    if name in ("cub", "nabirds"):
        sub = next((d for d in (source, source / "CUB_200_2011", source / "nabirds") if (d / "images.txt").exists()), None)
        if sub is None:
            raise FileNotFoundError(f"{name}: no images.txt under {source}; expected {FGVC[name][1]}")
        train, test = _cub_format(sub, sub.relative_to(source.parent).as_posix())
        return dict(zip(("train", "val"), _hold_out_val(train)), test=test)
    if name == "oxford_flowers":
        labels = loadmat(source / "imagelabels.mat", squeeze_me=True)["labels"]
        ids = loadmat(source / "setid.mat", squeeze_me=True)
        split = lambda key: {f"{pre}/jpg/image_{int(i):05d}.jpg": int(labels[int(i) - 1]) - 1
                             for i in np.atleast_1d(ids[key])}
        return {"train": split("trnid"), "val": split("valid"), "test": split("tstid")}
    if name == "stanford_dogs":
        def split(f):
            m = loadmat(source / f, squeeze_me=True)
            return {f"{pre}/Images/{p}": int(y) - 1 for p, y in zip(np.atleast_1d(m["file_list"]), np.atleast_1d(m["labels"]))}
        train = split("train_list.mat")
        return dict(zip(("train", "val"), _hold_out_val(train)), test=split("test_list.mat"))

    def split(f, folder):   # stanford_cars
        a = np.atleast_1d(loadmat(source / f, squeeze_me=True)["annotations"])
        return {f"{pre}/{folder}/{r['fname']}": int(r["class"]) - 1 for r in a}
    train = split("devkit/cars_train_annos.mat", "cars_train")
    return dict(zip(("train", "val"), _hold_out_val(train)),
                test=split("cars_test_annos_withlabels.mat", "cars_test"))


def write_splits(name: str, root=None) -> Path:
    """Convert <root>/fgvc/<name>/source into the three JSON maps next to it; returns the folder."""
    folder = fgvc_root(root) / name
    for split, items in convert(name, folder / "source").items():
        (folder / f"{split}.json").write_text(json.dumps(items, indent=0, sort_keys=True))
    return folder


def load_fgvc(name: str, root=None):
    """One FGVC dataset as a `clipadapt.data.vtab.Task` (group "fgvc") of lazily read images."""
    _check(name)
    folder = fgvc_root(root) / name
    require_files(folder, ("train.json", "val.json", "test.json"), f"FGVC dataset {name}",
                  f"python data_scripts/prepare_fgvc.py --dataset {name} --root {fgvc_root(root).parent}")
    parts = []
    for s in ("train", "val", "test"):
        items = json.loads((folder / f"{s}.json").read_text())
        keys = sorted(items)
        parts += [ImageFiles([folder / k for k in keys]), np.array([items[k] for k in keys], dtype=np.int64)]
    k = FGVC[name][0]
    return Task(name, "fgvc", tuple(str(i) for i in range(k)), *parts)
