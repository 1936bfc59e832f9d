"""A VTAB-1k-style suite for the `ci` profile: six small tasks in VTAB's three groups, 800 train / 200 val each.

VTAB-1k (Zhai et al., 2019) fine-tunes on 1,000 labelled images per task (train800 + val200) and tests on the
task's test split; its mean is the mean of the three group means. This suite keeps that shape with offline data:

| group | task | classes | source |
|---|---|---|---|
| natural | fashion-mnist | 10 clothes | Fashion-MNIST (Debian package) |
| natural | digits | 10 digits | scikit-learn's 8x8 digits (UCI), upsampled |
| specialized | textile | nominal / local defect / global defect | `conformal-clip-data` (simulated textile surfaces) |
| specialized | noisy-fashion | 10 clothes | Fashion-MNIST test images under severity-5 shot noise (a cheap sensor) |
| structured | orientation | 8 arrow directions | micro-world arrows |
| structured | tilt | 4 tilt bins of 10 degrees in [-20, 20] | micro-world squares, triangles, stars, crosses, hearts |

Every task is a fixed function of its seed: same seed, same split. The `paper` profile reads the real VTAB-1k
(19 tasks) from the layout that `data_scripts/prepare_vtab1k.py` exports (`load_vtab1k`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import real, shapes
from .corruptions import corrupt_batch
from .microworld import HELDOUT_SEED
from .real import require_files
from .registry import CIFAR100_CLASSES, ImageFiles, data_root

GROUPS = {"natural": ("fashion-mnist", "digits"), "specialized": ("textile", "noisy-fashion"),
          "structured": ("orientation", "tilt")}
TASKS = tuple(t for ts in GROUPS.values() for t in ts)
N_TRAIN, N_VAL = 800, 200
TEXTILE_CLASSES = ("nominal", "local defect", "global defect")
TILTS = ("-20 to -10 degrees", "-10 to 0 degrees", "0 to 10 degrees", "10 to 20 degrees")
TILTED = ("square", "triangle", "star", "cross", "heart")
ORIENTATIONS = ("east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east")
_TASK_SEED = HELDOUT_SEED + 500   # micro-world seeds of this suite, away from pretraining and other held-out sets


@dataclass
class Task:
    name: str
    group: str
    classes: tuple[str, ...]
    x_train: np.ndarray   # uint8 n x h x w x 3 (paper: lazily read image files); train800
    y_train: np.ndarray
    x_val: np.ndarray     # val200
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def x_trainval(self):
        if isinstance(self.x_train, np.ndarray):
            return np.concatenate([self.x_train, self.x_val])
        return ImageFiles(self.x_train.paths + self.x_val.paths)

    @property
    def y_trainval(self) -> np.ndarray:
        return np.concatenate([self.y_train, self.y_val])


def group_of(task: str) -> str:
    for g, ts in GROUPS.items():
        if task in ts:
            return g
    raise ValueError(f"unknown task {task!r}; the ci suite has: {', '.join(TASKS)}")


def _split(name: str, x: np.ndarray, y: np.ndarray, classes, n_test: int, seed: int) -> Task:
    if len(x) < N_TRAIN + N_VAL + 1:
        raise ValueError(f"task {name} has {len(x)} images; a VTAB-1k split needs more than {N_TRAIN + N_VAL}")
    idx = np.random.default_rng(seed).permutation(len(x))
    tr, va, te = idx[:N_TRAIN], idx[N_TRAIN:N_TRAIN + N_VAL], idx[N_TRAIN + N_VAL:N_TRAIN + N_VAL + n_test]
    y = np.asarray(y, dtype=np.int64)
    return Task(name, group_of(name), tuple(classes), x[tr], y[tr], x[va], y[va], x[te], y[te])


def _textile() -> tuple[np.ndarray, np.ndarray]:
    import conformal_clip_data as ccd
    from PIL import Image
    xs, ys = [], []
    for k, folder in enumerate((ccd.nominal_dir(), ccd.local_dir(), ccd.global_dir())):
        for p in sorted(Path(folder).iterdir()):
            if p.suffix.lower() in (".jpg", ".jpeg", ".png"):
                xs.append(np.asarray(Image.open(p).convert("RGB").resize((64, 64), Image.BICUBIC)))
                ys.append(k)
    return np.stack(xs), np.array(ys)


def _scenes(n: int, seed: int, **fixed) -> tuple[np.ndarray, list]:
    rng = np.random.default_rng(seed)
    out = [shapes.render_scene(rng, **({k: v(rng) for k, v in fixed.items()})) for _ in range(n)]
    return np.stack([o[0] for o in out]), [o[1] for o in out]


def load_task(name: str, n_test: int = 500, seed: int = 0) -> Task:
    """One task of the ci suite: train800 / val200 / a test set of up to `n_test` images."""
    group_of(name)
    n = N_TRAIN + N_VAL + n_test
    s = _TASK_SEED + 37 * seed
    if name == "fashion-mnist":   # train800/val200 drawn from the train split, test from the test split
        x, y = real.load_fashion_mnist("train")
        xt, yt = real.load_fashion_mnist("test")
        i = np.random.default_rng(seed).permutation(len(x))
        tr, va = i[:N_TRAIN], i[N_TRAIN:N_TRAIN + N_VAL]
        y, yt = y.astype(np.int64), yt.astype(np.int64)
        return Task(name, "natural", real.FASHION_CLASSES, x[tr], y[tr], x[va], y[va], xt[:n_test], yt[:n_test])
    if name == "digits":
        x, y = real.load_digits_rgb()
        return _split(name, x, y, real.DIGIT_CLASSES, n_test, seed)
    if name == "textile":
        x, y = _textile()
        return _split(name, x, y, TEXTILE_CLASSES, n_test, seed)
    if name == "noisy-fashion":   # from the test split (the tiny CLIP pretrained on part of the train split)
        x, y = real.load_fashion_mnist("test")
        x = corrupt_batch(x[:n], "shot_noise", 5, seed=s)
        return _split(name, x, y[:n], real.FASHION_CLASSES, n_test, seed)
    if name == "orientation":
        x, scenes = _scenes(n, s + 2, shape=lambda r: "arrow")
        return _split(name, x, [int(round(sc.rotation / 45)) % 8 for sc in scenes], ORIENTATIONS, n_test, seed)
    x, scenes = _scenes(n, s + 3, shape=lambda r: TILTED[int(r.integers(len(TILTED)))], count=lambda r: 1)
    y = [min(3, int((sc.rotation + 20) // 10)) for sc in scenes]
    return _split(name, x, y, TILTS, n_test, seed)


# ---- the paper profile: VTAB-1k as exported by the official task_adaptation splits

# name -> (group, number of classes); names and class counts as the SPT/NOAH code expects them
VTAB1K = {
    "cifar": ("natural", 100), "caltech101": ("natural", 102), "dtd": ("natural", 47),
    "oxford_flowers102": ("natural", 102), "oxford_iiit_pet": ("natural", 37), "svhn": ("natural", 10),
    "sun397": ("natural", 397),
    "patch_camelyon": ("specialized", 2), "eurosat": ("specialized", 10), "resisc45": ("specialized", 45),
    "diabetic_retinopathy": ("specialized", 5),
    "clevr_count": ("structured", 8), "clevr_dist": ("structured", 6), "dmlab": ("structured", 6),
    "kitti": ("structured", 4), "dsprites_loc": ("structured", 16), "dsprites_ori": ("structured", 16),
    "smallnorb_azi": ("structured", 18), "smallnorb_ele": ("structured", 9),
}


# VTAB-1k task -> its key in clip_benchmark's English class names (`clip_benchmark/datasets/en_classnames.json`,
# in the label order of VTAB's task code); cifar (CIFAR-100) takes the registry's names; the other tasks have none and
# keep their label numbers
CLASSNAMES_KEY = {
    "caltech101": "caltech101_vtab", "oxford_flowers102": "flowers", "oxford_iiit_pet": "pets", "svhn": "svhn",
    "patch_camelyon": "pcam", "eurosat": "eurosat", "diabetic_retinopathy": "diabetic_retinopathy",
    "clevr_count": "clevr_count_all", "clevr_dist": "clevr_closest_object_distance", "dmlab": "dmlab",
    "kitti": "kitti_closest_vehicle_distance",
}


def vtab1k_classnames(name: str) -> tuple[str, ...]:
    """Class names of a VTAB-1k task for text classifiers (zero-shot CLIP, prompts): clip_benchmark's where it has
    them, else the label numbers ("0", "1", ...), which a text classifier cannot use (`has_class_names` says so)."""
    import json
    from importlib.resources import files
    k = VTAB1K[name][1]
    if name == "cifar":   # VTAB's cifar is CIFAR-100, in its label order (as CIFAR-100-C)
        return CIFAR100_CLASSES
    if name not in CLASSNAMES_KEY:
        return tuple(str(i) for i in range(k))
    names = json.loads((files("clip_benchmark.datasets") / "en_classnames.json").read_text())[CLASSNAMES_KEY[name]]
    if len(names) != k:
        raise ValueError(f"clip_benchmark lists {len(names)} class names for {name}, VTAB-1k has {k} classes")
    return tuple(names)


def has_class_names(task: Task) -> bool:
    """False when the classes are only label numbers (VTAB-1k tasks without names in clip_benchmark)."""
    return not all(c.isdigit() for c in task.classes)


def vtab1k_root(root=None) -> Path:
    return (Path(root) if root is not None else data_root()) / "vtab-1k"


def _read_list(folder: Path, split: str):
    lines = [ln.split() for ln in (folder / f"{split}.txt").read_text().splitlines() if ln.strip()]
    return ImageFiles([folder / p for p, _ in lines]), np.array([int(y) for _, y in lines], dtype=np.int64)


def load_vtab1k(name: str, root=None) -> Task:
    """One VTAB-1k task from `<root>/vtab-1k/<name>/{train800,val200,test}.txt` (lines "images/<split>/000000.jpg
    <label>"), the layout of the official export; images are read lazily."""
    if name not in VTAB1K:
        raise ValueError(f"unknown VTAB-1k task {name!r}; the 19 tasks are: {', '.join(VTAB1K)}")
    folder = vtab1k_root(root) / name
    require_files(folder, ("train800.txt", "val200.txt", "test.txt"), f"VTAB-1k task {name}",
                  f"python data_scripts/prepare_vtab1k.py --task {name} --root {vtab1k_root(root).parent}")
    group, k = VTAB1K[name]
    (xtr, ytr), (xva, yva), (xte, yte) = (_read_list(folder, s) for s in ("train800", "val200", "test"))
    return Task(name, group, vtab1k_classnames(name), xtr, ytr, xva, yva, xte, yte)
