"""Download (where the release is public) and unpack an FGVC dataset for the SPT chapter's `paper` profile.

    python data_scripts/prepare_fgvc.py --dataset cub --root ~/.cache/clipadapt/data
    python data_scripts/prepare_fgvc.py --dataset oxford_flowers
    python data_scripts/prepare_fgvc.py --dataset stanford_dogs
    python data_scripts/prepare_fgvc.py --dataset nabirds --archive ~/Downloads/nabirds.tar.gz
    python data_scripts/prepare_fgvc.py --dataset stanford_cars --archive ~/Downloads/stanford_cars   # a folder

CUB-200-2011 (Caltech data repository), Oxford Flowers 102 (VGG) and Stanford Dogs are downloaded from their
official pages. NABirds needs its terms accepted (https://dl.allaboutbirds.org/nabirds) and Stanford Cars is no
longer served by Stanford: pass the archive (.tar/.tgz) or an unpacked folder you have with --archive. Everything
is unpacked into <root>/fgvc/<dataset>/source/ and the train/val/test JSON maps are written next to it
(`clipadapt.data.fgvc`). Re-running skips what is already there.
"""
from __future__ import annotations

import argparse
import shutil
import tarfile
from pathlib import Path

from clipadapt.data.fgvc import FGVC, fgvc_root, write_splits
from clipadapt.data.registry import data_root
from clipadapt.utils import DownloadError, download

URLS = {
    "cub": ["https://data.caltech.edu/records/65de6-vkk18/files/CUB_200_2011.tgz"],
    "oxford_flowers": ["https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz",
                       "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat",
                       "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/setid.mat"],
    "stanford_dogs": ["http://vision.stanford.edu/aditya86/ImageNetDogs/images.tar",
                      "http://vision.stanford.edu/aditya86/ImageNetDogs/lists.tar"],
}
# MD5s the releases are checked against by common loaders (torchvision's Flowers102; CUB-200-2011 loaders). Stanford
# Dogs publishes none, so its files are only checked for completeness.
CHECKSUMS = {
    "CUB_200_2011.tgz": "md5:97eceeb196236b17998738112f37df78",
    "102flowers.tgz": "md5:52808999861908f626f3c1f4e79d11fa",
    "imagelabels.mat": "md5:e0620be6f572b9609742df49c70aed4d",
    "setid.mat": "md5:a5357ecc9cb78c4bef273ce3793fc85c",
}


def unpack(path: Path, dest: Path) -> None:
    if path.is_dir():
        shutil.copytree(path, dest, dirs_exist_ok=True)
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as t:
            t.extractall(dest, filter="data")
    else:
        shutil.copy(path, dest / path.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, choices=sorted(FGVC))
    ap.add_argument("--root", default=str(data_root()))
    ap.add_argument("--archive", action="append", default=[], help="a local archive or folder of the release")
    a = ap.parse_args()
    folder = fgvc_root(a.root) / a.dataset
    if all((folder / f"{s}.json").exists() for s in ("train", "val", "test")):
        print(f"{a.dataset}: already at {folder}")
        return
    source = folder / "source"
    source.mkdir(parents=True, exist_ok=True)
    archives = [Path(p).expanduser() for p in a.archive]
    if not archives:
        if a.dataset not in URLS:
            raise SystemExit(f"{a.dataset} has no public download; get the release ({FGVC[a.dataset][1]}) and pass "
                             f"it with --archive PATH")
        names = [url.rsplit("/", 1)[1] for url in URLS[a.dataset]]
        hint = (f"download {', '.join(URLS[a.dataset])} on a machine with internet and pass "
                f"{'them' if len(names) > 1 else 'it'} with --archive:\n    python data_scripts/prepare_fgvc.py "
                f"--dataset {a.dataset} --root {a.root} " + " ".join(f"--archive PATH/TO/{n}" for n in names))
        for url, name in zip(URLS[a.dataset], names):
            archives.append(download(url, folder / name, CHECKSUMS.get(name), hint=hint))
    for p in archives:
        unpack(p, source)
    out = write_splits(a.dataset, a.root)
    print(f"{a.dataset}: splits written to {out}")


if __name__ == "__main__":
    try:
        main()
    except DownloadError as e:
        raise SystemExit(f"error: {e}") from None
