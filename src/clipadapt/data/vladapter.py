"""VL-Adapter's image-text data, as the VL-PET chapter's `paper` profile reads it: VQA v2, GQA, NLVR2 and COCO
captions, each image given as CLIP RN101 grid features (the features VL-Adapter and VL-PET train on).

`data_scripts/prepare_vladapter.py` restores the release (HF Hub `ylsung/VL-Adapter-datasets`) into
<root>/vl-adapter/datasets with the official restore tool; the layout is the one VL-PET's `src/*_clip_data.py` read:

    COCO/clip_features/data_clip_RN101_att/<img_id>.h5   group <img_id>, dataset "features": 49 x 2048 float16
    COCO/dataset_coco.json                               Karpathy splits (images -> split, filename, sentences)
    vqa/karpathy_{train,val,test}.json                   [{img_id, sent, label: {answer: score}, question_id}]
    VG/clip_features/data_clip_RN101_att/<img_id>.h5     the images of GQA train / valid
    GQA/clip_features/data_clip_RN101_att/<img_id>.h5    the images of GQA testdev
    GQA/{train,valid,testdev}.json                       [{img_id, sent, label: {answer: score}, question_id}]
    nlvr/clip_features/data_clip_RN101_att/<img_id>.h5
    nlvr/{train,valid,test}.json                         [{img0, img1, sent, label: 0 | 1, uid}]

The official splits (VL-PET `src/multitask.py`): train = VQA karpathy_train, GQA train + valid, NLVR2 train, COCO
Karpathy train + restval (one example per caption); test = VQA karpathy_test, GQA testdev, NLVR2 test (test-P),
COCO Karpathy test (one example per image, its five captions as references).

Each 7 x 7 grid is max-pooled to 6 x 6 = 36 tokens when read, as the official `--downsample` does in the model
(a parameter-free pool, so reading it here gives the same tokens).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .real import DatasetMissingError
from .registry import data_root
from .vltasks import TASKS, VLExample, VLSplit

FEATURES = "clip_features/data_clip_RN101_att"
GRID, POOLED, FEAT_DIM = 7, 6, 2048
FEATURE_FOLDERS = ("COCO", "VG", "GQA", "nlvr")
# task -> [(annotation file, feature folder)] per split; captions read COCO/dataset_coco.json's Karpathy splits
SPLITS = {
    "train": {"vqa": [("vqa/karpathy_train.json", "COCO")],
              "gqa": [("GQA/train.json", "VG"), ("GQA/valid.json", "VG")],
              "nlvr": [("nlvr/train.json", "nlvr")],
              "caption": [("COCO/dataset_coco.json", "COCO")]},
    "test": {"vqa": [("vqa/karpathy_test.json", "COCO")],
             "gqa": [("GQA/testdev.json", "GQA")],
             "nlvr": [("nlvr/test.json", "nlvr")],
             "caption": [("COCO/dataset_coco.json", "COCO")]},
}
KARPATHY = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def vladapter_root(root=None) -> Path:
    """<data root>/vl-adapter/datasets, the folder `prepare_vladapter.py --root <data root>` fills."""
    return (Path(root) if root is not None else data_root()) / "vl-adapter" / "datasets"


def prepare_command(root=None, folders=None) -> str:
    cmd = f"python data_scripts/prepare_vladapter.py --root {Path(root) if root is not None else data_root()}"
    return cmd + "".join(f" --datasets {f}" for f in folders or ())


class H5Features:
    """The grid features of a list of images, read lazily: item i is image i's 36 x 2048 float tensor (the 7 x 7 CLIP
    RN101 grid max-pooled to 6 x 6). `shape` is (images, tokens, dim), what `seq2seq.collate` needs."""

    def __init__(self, files: list[Path], keys: list[str], root: Path | None = None):
        self.files, self.keys, self.root = list(files), list(keys), root

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.files), POOLED * POOLED, FEAT_DIM

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        import h5py
        path = self.files[i]
        if not path.exists():
            folder = path.parent.parent.parent.name
            raise DatasetMissingError(f"the features of image {self.keys[i]} are not at {path}. Restore them with\n"
                                      f"    {prepare_command(self.root, [folder])}")
        with h5py.File(path, "r") as f:
            a = f[f"{self.keys[i]}/features"][...]
        if a.shape != (GRID * GRID, FEAT_DIM):
            raise ValueError(f"{path} holds features of shape {a.shape}; VL-Adapter's CLIP RN101 grid features are "
                             f"{(GRID * GRID, FEAT_DIM)}")
        x = torch.from_numpy(a.astype(np.float32)).T.reshape(FEAT_DIM, GRID, GRID)
        return torch.nn.functional.adaptive_max_pool2d(x, POOLED).reshape(FEAT_DIM, -1).T


def _read(folder: Path, rel: str, root) -> object:
    path = folder / rel
    if not path.exists():
        raise DatasetMissingError(f"VL-Adapter's image-text data is not at {folder} (missing {rel}). Prepare it "
                                  f"with\n    {prepare_command(root)}")
    return json.loads(path.read_text())


def _best(label: dict) -> str:
    return max(label.items(), key=lambda kv: kv[1])[0]


def _task_examples(task: str, split: str, folder: Path, root, image_index) -> list[VLExample]:
    """The examples of one task and split; `image_index(feature folder, img_id)` gives the image's position."""
    out = []
    for rel, feat in SPLITS[split][task]:
        data = _read(folder, rel, root)
        if task == "caption":
            for im in data["images"]:
                if KARPATHY[im["split"]] != split:
                    continue
                refs = tuple(s["raw"].strip() for s in im["sentences"])
                i = image_index(feat, im["filename"].split(".")[0])
                targets = refs if split == "train" else refs[:1]   # train: one example per caption (official)
                out += [VLExample("caption", (i,), "", t, refs) for t in targets]
        elif task == "nlvr":
            for d in data:
                answer = "true" if int(d["label"]) == 1 else "false"
                out.append(VLExample("nlvr", (image_index(feat, d["img0"]), image_index(feat, d["img1"])),
                                     d["sent"], answer, (answer,)))
        else:   # vqa, gqa: soft labels {answer: score}; the target is the best-scored answer
            for d in data:
                label = d.get("label") or {}
                if split == "train" and not any(v > 0 for v in label.values()):
                    continue   # the official loss weights such a question by 0
                out.append(VLExample(task, (image_index(feat, d["img_id"]),), d["sent"],
                                     _best(label) if label else "", tuple(label), tuple(float(v) for v in label.values())))
    return out


def load_vladapter(split: str, root=None, n_per_task: int | None = None, seed: int = 0,
                   tasks=TASKS) -> tuple[VLSplit, H5Features]:
    """The `train` or `test` split of the four tasks as a `VLSplit` (its `images` are the image ids) and the lazy
    features its examples index. `n_per_task` keeps a seeded random subset of each task (None: all of it)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
    folder = vladapter_root(root)
    if not folder.is_dir():
        raise DatasetMissingError(f"VL-Adapter's image-text data is not at {folder}. Prepare it with\n"
                                  f"    {prepare_command(root)}")
    files, keys, index = [], [], {}

    def image_index(feat: str, img_id: str) -> int:
        k = (feat, img_id)
        if k not in index:
            index[k] = len(files)
            files.append(folder / feat / FEATURES / f"{img_id}.h5")
            keys.append(img_id)
        return index[k]

    rng = np.random.default_rng(seed)
    examples = []
    for task in tasks:
        ex = _task_examples(task, split, folder, root, image_index)
        if not ex:
            raise DatasetMissingError(f"no {task} examples for the {split} split under {folder}; is the restore "
                                      f"complete? Re-run\n    {prepare_command(root)}")
        if n_per_task is not None and n_per_task < len(ex):
            ex = [ex[j] for j in sorted(rng.choice(len(ex), n_per_task, replace=False))]
        examples += ex
    # keep only the images the kept examples use, renumbered in order
    used = sorted({i for e in examples for i in e.images})
    remap = {old: new for new, old in enumerate(used)}
    examples = [VLExample(e.task, tuple(remap[i] for i in e.images), e.text, e.target, e.references, e.weights)
                for e in examples]
    feats = H5Features([files[i] for i in used], [keys[i] for i in used], root=Path(root) if root is not None else None)
    return VLSplit(images=[keys[i] for i in used], scenes=[], examples=examples), feats
