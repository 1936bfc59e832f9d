"""Export VTAB-1k (Zhai et al., 2019) for the SPT chapter's `paper` profile, on a machine with internet.

    pip install tensorflow tensorflow-datasets git+https://github.com/google-research/task_adaptation
    python data_scripts/prepare_vtab1k.py --task all --root ~/.cache/clipadapt/data
    python data_scripts/prepare_vtab1k.py --task dtd --task eurosat

The splits are those of google-research/task_adaptation (train800, val200, train800val200 and the full test
split), read through TFDS. Each task becomes <root>/vtab-1k/<task>/ with one JPEG per image under images/<split>/
and a <split>.txt list of "images/<split>/000000.jpg <label>" lines: the layout of the SPT and NOAH code, which
`clipadapt.data.vtab.load_vtab1k` reads. Some TFDS datasets (sun397, diabetic_retinopathy, patch_camelyon) are
large or need a manual download step; TFDS says so when it stops. Re-running skips finished tasks.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from clipadapt.data.registry import data_root
from clipadapt.data.vtab import VTAB1K

# task -> (task_adaptation data module, constructor arguments)
SOURCES = {
    "cifar": ("cifar", {"num_classes": 100}), "caltech101": ("caltech", {}), "dtd": ("dtd", {}),
    "oxford_flowers102": ("oxford_flowers102", {}), "oxford_iiit_pet": ("oxford_iiit_pet", {}),
    "svhn": ("svhn", {}), "sun397": ("sun397", {}), "patch_camelyon": ("patch_camelyon", {}),
    "eurosat": ("eurosat", {}), "resisc45": ("resisc45", {}),
    "diabetic_retinopathy": ("diabetic_retinopathy", {"config": "btgraham-300"}),
    "clevr_count": ("clevr", {"task": "count_all"}), "clevr_dist": ("clevr", {"task": "closest_object_distance"}),
    "dmlab": ("dmlab", {}), "kitti": ("kitti", {"task": "closest_vehicle_distance"}),
    "dsprites_loc": ("dsprites", {"predicted_attribute": "label_x_position", "num_classes": 16}),
    "dsprites_ori": ("dsprites", {"predicted_attribute": "label_orientation", "num_classes": 16}),
    "smallnorb_azi": ("smallnorb", {"predicted_attribute": "label_azimuth"}),
    "smallnorb_ele": ("smallnorb", {"predicted_attribute": "label_elevation"}),
}
SPLITS = ("train800", "val200", "train800val200", "test")
INSTALL = "pip install tensorflow tensorflow-datasets git+https://github.com/google-research/task_adaptation"


def export(task: str, out: Path) -> None:
    import importlib

    from PIL import Image
    module, kwargs = SOURCES[task]
    try:
        from task_adaptation.data.base import compose_preprocess_fn
        from task_adaptation.registry import Registry
        importlib.import_module(f"task_adaptation.data.{module}")   # registers the data class
    except ImportError as e:
        package = (e.name or "task_adaptation").split(".")[0]
        raise SystemExit(f"error: the VTAB-1k export needs the package {package!r}, which is not installed: it "
                         "reads the splits through google-research's task_adaptation and TensorFlow Datasets, which "
                         f"clipadapt does not install. Install them with\n    {INSTALL}\nthen run this command "
                         "again.") from None
    data = Registry.lookup(f"data.{module}")(**kwargs)
    folder = out / task
    for split in SPLITS:
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        ds = data._get_dataset_split(split_name=split, shuffle_files=False)
        ds = ds.map(compose_preprocess_fn(data._image_decoder, data._base_preprocess_fn))
        lines = []
        for i, item in enumerate(ds):
            rel = f"images/{split}/{i:06d}.jpg"
            Image.fromarray(item["image"].numpy()).save(folder / rel)
            lines.append(f"{rel} {int(item['label'].numpy())}")
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
        print(f"{task}/{split}: {len(lines)} images")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", action="append", required=True, choices=["all", *VTAB1K])
    ap.add_argument("--root", default=str(data_root()))
    a = ap.parse_args()
    out = Path(a.root).expanduser() / "vtab-1k"
    for task in (list(VTAB1K) if "all" in a.task else a.task):
        if all((out / task / f"{s}.txt").exists() for s in SPLITS):
            print(f"{task}: already at {out / task}")
            continue
        export(task, out)


if __name__ == "__main__":
    main()
