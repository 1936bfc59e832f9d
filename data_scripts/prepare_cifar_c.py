"""Download and unpack CIFAR-10-C or CIFAR-100-C (Hendrycks & Dietterich, ICLR 2019) for the `paper` profile.

    python data_scripts/prepare_cifar_c.py --dataset cifar10-c --root ~/.cache/clipadapt/data

The .tar files come from Zenodo (records 2535967 and 3555552, about 2.9 GB each) and are unpacked into
<root>/CIFAR-10-C or <root>/CIFAR-100-C, the layout `clipadapt.data.registry.load_cifar_c` reads. Re-running skips
what is already there.
"""
from __future__ import annotations

import argparse
import tarfile
import urllib.request
from pathlib import Path

from clipadapt.data.registry import DATASETS, data_root
from clipadapt.utils import progress

URLS = {
    "cifar10-c": "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar",
    "cifar100-c": "https://zenodo.org/records/3555552/files/CIFAR-100-C.tar",
}


def download(url: str, dest: Path) -> None:
    tmp = dest.with_suffix(".part")
    with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
        total = int(r.headers.get("Content-Length", 0)) or None
        with progress(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
            while chunk := r.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    tmp.replace(dest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, choices=sorted(URLS))
    ap.add_argument("--root", default=str(data_root()))
    a = ap.parse_args()
    spec, root = DATASETS[a.dataset], Path(a.root).expanduser()
    folder = root / spec.folder
    if (folder / "labels.npy").exists():
        print(f"{spec.folder}: already at {folder}")
        return
    root.mkdir(parents=True, exist_ok=True)
    tar = root / f"{spec.folder}.tar"
    if not tar.exists():
        download(URLS[a.dataset], tar)
    with tarfile.open(tar) as t:
        t.extractall(root, filter="data")
    print(f"{spec.folder}: unpacked to {folder}")


if __name__ == "__main__":
    main()
