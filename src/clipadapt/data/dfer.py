"""The dynamic facial expression datasets of PE-CLIP (paper profile): DFEW, FERV39k and AFEW.

None can be downloaded without a licence or an emailed agreement, so nothing here fetches frames. The user puts the
face-cropped frames of a release under <root>/dfer/<name>/ and the annotation lists of the official PE-CLIP
repository (SAADI-Ibtissam/PE-CLIP, folder `annotation/`) under <root>/dfer/<name>/annotation/;
`python data_scripts/prepare_dfer.py --dataset <name>` downloads those lists (they are public) and checks the folder.

A list line is `<path> <number of frames> <label>`. The official paths are absolute paths on the authors' machine
(`D:/KmuProj2/Code4/DFEWdataset/Clip/clip_224x224/00001`); the reader keeps the part from the release's own top folder
(`Clip/...`, `2_ClipsforFaceCrop/...`, `AFEW_Face_Retina/...`) and puts it under <root>/dfer/<name>/. Frames of a
clip are its folder's files in sorted order, sampled as the official loader does: 16 segments, the centre frame of
each (evaluation) or a random frame in each (training), short clips padded with their last frame.

Labels follow DFEW's order (happiness, sadness, neutral, anger, surprise, disgust, fear), which PE-CLIP's class texts
use. AFEW's lists number the classes alphabetically (Angry=0 ... Surprise=6); the reader maps them to DFEW's order,
which the official AFEW script does not do (the chapter's reproduction notes).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..transforms import preprocess_batch
from .clips import EXPRESSIONS
from .real import DatasetMissingError
from .registry import data_root

AFEW_ORDER = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")   # alphabetical, as listed
LISTS_URL = "https://raw.githubusercontent.com/SAADI-Ibtissam/PE-CLIP/main/annotation/{}"


@dataclass(frozen=True)
class DferSpec:
    name: str
    anchor: str                  # the release's top folder, where the kept part of a listed path starts
    lists: dict[str, str]        # split -> annotation file ({fold} filled in)
    folds: int
    label_order: tuple[str, ...]
    request: str                 # how to get the frames

    def list_file(self, split: str, fold: int = 1) -> str:
        if split not in self.lists:
            raise ValueError(f"{self.name} has the splits {', '.join(self.lists)}; got {split!r}")
        if not 1 <= fold <= self.folds:
            raise ValueError(f"{self.name} has folds 1..{self.folds}; got {fold}")
        return self.lists[split].format(fold=fold)

    def list_files(self) -> list[str]:
        return sorted({self.list_file(s, f) for s in self.lists for f in range(1, self.folds + 1)})


DFER = {
    "dfew": DferSpec("dfew", "Clip", {"train": "DFEW_set_{fold}_train.txt", "test": "DFEW_set_{fold}_test.txt"}, 5,
                     EXPRESSIONS, "https://dfew-dataset.github.io (sign the agreement; the password comes by email)"),
    "ferv39k": DferSpec("ferv39k", "2_ClipsforFaceCrop", {"train": "FERV39K_train.txt", "test": "FERV39K_test.txt"},
                        1, EXPRESSIONS, "https://github.com/wangyanckxx/FERV39k (request the agreement by email)"),
    "afew": DferSpec("afew", "AFEW_Face_Retina", {"train": "AFEW_train.txt", "test": "AFEW_val.txt"}, 1, AFEW_ORDER,
                     "https://sites.google.com/site/emotiwchallenge (the EmotiW/AFEW licence, on request)"),
}


def get_dfer(name: str) -> DferSpec:
    if name not in DFER:
        raise ValueError(f"unknown facial expression dataset {name!r}; known: {', '.join(DFER)}")
    return DFER[name]


def dfer_root(name: str, root=None) -> Path:
    return (Path(root) if root is not None else data_root()) / "dfer" / name


def prepare_command(name: str, root=None) -> str:
    return f"python data_scripts/prepare_dfer.py --dataset {name}" + (f" --root {root}" if root is not None else "")


def segment_indices(n_frames: int, segments: int = 16, rng: np.random.Generator | None = None) -> np.ndarray:
    """Which frames represent a clip: one per segment, the centre one, or a random one when `rng` is given (TSN
    sampling, as the official loader); clips shorter than `segments` are padded with their last frame."""
    if n_frames < 1:
        raise ValueError("a clip needs at least one frame")
    if n_frames <= segments:
        return np.pad(np.arange(n_frames), (0, segments - n_frames), mode="edge")
    if rng is None:
        tick = n_frames / segments
        return np.array([int(tick / 2 + tick * k) for k in range(segments)])
    width = n_frames // segments
    return np.arange(segments) * width + rng.integers(width, size=segments)


def read_list(name: str, split: str, fold: int = 1, root=None) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """(clip folders, frame counts, labels in DFEW order) of one annotation list."""
    spec = get_dfer(name)
    base = dfer_root(name, root)
    path = base / "annotation" / spec.list_file(split, fold)
    if not path.exists():
        raise DatasetMissingError(f"the {name} annotation list {path.name} is not in {path.parent}. Get the lists with\n"
                                  f"    {prepare_command(name, root)}")
    folders, counts, labels = [], [], []
    for ln, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise ValueError(f"{path}:{ln}: expected '<path> <frames> <label>', got {line!r}")
        tail = Path(parts[0].replace("\\", "/")).parts
        if spec.anchor not in tail:
            raise ValueError(f"{path}:{ln}: the path {parts[0]!r} has no {spec.anchor!r} folder; "
                             f"{name} clips live under {base / spec.anchor}")
        folders.append(base.joinpath(*tail[tail.index(spec.anchor):]))
        counts.append(int(parts[1]))
        labels.append(EXPRESSIONS.index(spec.label_order[int(parts[2])]))
    return folders, np.array(counts), np.array(labels, np.int64)


class VideoFiles(torch.utils.data.Dataset):
    """Clips read from frame folders; indexed by a list of positions it returns (videos x T x 3 x S x S, labels).
    `train=True` draws a random frame per segment from torch's generator, which `seed_everything` seeds and a
    DataLoader seeds anew per worker and per epoch (a generator kept in the Dataset would give every worker, and every
    epoch, the same frames)."""

    def __init__(self, folders, labels, transform, segments: int = 16, train: bool = False):
        self.folders, self.transform, self.segments, self.train = list(folders), transform, segments, train
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.folders)

    def frames(self, i: int) -> list[Path]:
        files = sorted(p for p in Path(self.folders[i]).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not files:
            raise DatasetMissingError(f"no frames (.jpg/.png) in {self.folders[i]}")
        rng = np.random.default_rng(int(torch.randint(2**62, (1,)).item())) if self.train else None
        return [files[k] for k in segment_indices(len(files), self.segments, rng)]

    def __getitem__(self, idx):
        from PIL import Image

        videos = [preprocess_batch(self.transform, [np.asarray(Image.open(f).convert("RGB")) for f in self.frames(int(i))])
                  for i in idx]
        return torch.stack(videos), self.labels[list(idx)]


def check_frames(name: str, folders: list[Path], root=None) -> None:
    """Every listed clip folder must exist; otherwise say how many are missing and where to get the frames."""
    missing = [f for f in folders if not f.is_dir()]
    if missing:
        spec = get_dfer(name)
        raise DatasetMissingError(
            f"{len(missing)} of {len(folders)} listed {name} clips are missing (first: {missing[0]}). The frames need "
            f"a licence: {spec.request}. Put the face-cropped frames under {dfer_root(name, root) / spec.anchor} and "
            f"check with\n    {prepare_command(name, root)}")


def load_dfer(name: str, transform, fold: int = 1, root=None, segments: int = 16, val_fraction: float = 0.1,
              seed: int = 0) -> dict[str, VideoFiles]:
    """The train / val / test clips of one fold. val is a seeded `val_fraction` of the training list, for model
    selection (the official scripts select on the test split)."""
    folders, _, labels = read_list(name, "train", fold, root)
    t_folders, _, t_labels = read_list(name, "test", fold, root)
    check_frames(name, folders + t_folders, root)
    order = np.random.default_rng(seed).permutation(len(folders))
    n_val = round(val_fraction * len(folders))
    val, train = order[:n_val], order[n_val:]
    pick = lambda ix: ([folders[i] for i in ix], labels[ix])
    return {"train": VideoFiles(*pick(train), transform, segments, train=True),
            "val": VideoFiles(*pick(val), transform, segments),
            "test": VideoFiles(t_folders, t_labels, transform, segments)}
