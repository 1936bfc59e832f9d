"""Download and unpack a corruption benchmark (Hendrycks & Dietterich, ICLR 2019) for the `paper` profile.

    python data_scripts/prepare_corruptions.py --dataset cifar10-c --root ~/.cache/clipadapt/data
    python data_scripts/prepare_corruptions.py --dataset cifar100-c
    python data_scripts/prepare_corruptions.py --dataset imagenet-c

CIFAR-10-C and CIFAR-100-C: one .tar each from Zenodo (records 2535967 and 3555552, about 2.9 GB each), unpacked into
<root>/CIFAR-10-C or <root>/CIFAR-100-C, the layout `clipadapt.data.registry.load_cifar_c` reads.
ImageNet-C: the four corruption-family tars of Zenodo record 2235448 (noise, blur, weather, digital; tens of GB),
unpacked into <root>/ImageNet-C/<corruption>/<severity>/<wnid>/. If you already have ImageNet-C, skip this and pass
its parent folder as the notebook's `data_root` (or set CLIPADAPT_DATA). Re-running skips what is already there.

Every tar is checked against the MD5 that Zenodo publishes for it (read from the record's API entry); an interrupted
download resumes where it stopped, so a cluster job can prepare a shared data root once.
"""
from __future__ import annotations

import argparse
import json
import tarfile
import urllib.request
from pathlib import Path

from clipadapt.data.corruptions import CORRUPTIONS
from clipadapt.data.registry import DATASETS, data_root
from clipadapt.utils import DownloadError, download, reaching

ZENODO_URL = "https://zenodo.org"
ZENODO = {  # dataset: (Zenodo record, the files it needs)
    "cifar10-c": ("2535967", ["CIFAR-10-C.tar"]),
    "cifar100-c": ("3555552", ["CIFAR-100-C.tar"]),
    "imagenet-c": ("2235448", ["noise.tar", "blur.tar", "weather.tar", "digital.tar"]),
}


def zenodo_checksums(record: str, hint: str) -> dict[str, str]:
    """{file name: "md5:<hex>"} as the Zenodo record publishes them; DownloadError with `hint` when unreachable."""
    url = f"{ZENODO_URL}/api/records/{record}"
    with reaching(url, hint), urllib.request.urlopen(url, timeout=60) as r:
        files = json.load(r)["files"]
    return {f["key"]: f["checksum"] for f in files}


def offline_hint(name: str, root: Path, folder: Path) -> str:
    """Where the files go when this machine cannot reach Zenodo: unpacked where `is_ready` looks for them."""
    record, tars = ZENODO[name]
    where = (f"into {folder} (one folder per corruption: <corruption>/<severity>/<wnid>/)" if name == "imagenet-c"
             else f"into {root} (it holds {folder.name}/ with labels.npy and one .npy per corruption)")
    return (f"download {', '.join(tars)} from {ZENODO_URL}/records/{record} on a machine with internet and "
            f"unpack {'them' if len(tars) > 1 else 'it'} {where}; this command then finds {folder} ready and downloads "
            "nothing.")


def is_ready(name: str, folder: Path) -> bool:
    if name == "imagenet-c":
        return all((folder / c / "5").is_dir() for c in CORRUPTIONS)
    return (folder / "labels.npy").exists() and all((folder / f"{c}.npy").exists() for c in CORRUPTIONS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, choices=sorted(ZENODO))
    ap.add_argument("--root", default=str(data_root()))
    a = ap.parse_args()
    spec, root = DATASETS[a.dataset], Path(a.root).expanduser()
    folder = root / spec.folder
    if is_ready(a.dataset, folder):
        print(f"{spec.folder}: already at {folder}")
        return
    record, tars = ZENODO[a.dataset]
    hint = offline_hint(a.dataset, root, folder)
    checksums = zenodo_checksums(record, hint)
    # CIFAR tars hold the folder itself; the ImageNet-C tars hold the corruption folders
    dest = root if a.dataset != "imagenet-c" else folder
    dest.mkdir(parents=True, exist_ok=True)
    for name in tars:
        tar = download(f"{ZENODO_URL}/records/{record}/files/{name}", root / name, checksums[name], hint=hint)
        with tarfile.open(tar) as t:
            t.extractall(dest, filter="data")
    if not is_ready(a.dataset, folder):
        raise SystemExit(f"{spec.folder}: unpacked, but {folder} does not have the expected layout (all 15 "
                         "corruptions); check the tar contents and move the folders there")
    print(f"{spec.folder}: unpacked to {folder}")


if __name__ == "__main__":
    try:
        main()
    except DownloadError as e:
        raise SystemExit(f"error: {e}") from None
