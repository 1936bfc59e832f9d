"""Check a facial expression dataset for the PE-CLIP chapter's `paper` profile: DFEW, FERV39k or AFEW.

    python data_scripts/prepare_dfer.py --dataset dfew
    python data_scripts/prepare_dfer.py --dataset afew --root /data/clipadapt

The frames need a licence or an emailed agreement (the message says where to ask); put the release's face-cropped
frames under <root>/dfer/<name>/ (DFEW: Clip/clip_224x224/<id>/*.jpg). This script downloads the public annotation
lists of the official PE-CLIP repository into <root>/dfer/<name>/annotation/ when they are missing, then checks that
every listed clip folder is there. Re-running downloads nothing that is present.
"""
from __future__ import annotations

import argparse

from clipadapt.data.dfer import DFER, LISTS_URL, check_frames, dfer_root, get_dfer, read_list
from clipadapt.data.real import DatasetMissingError
from clipadapt.data.registry import data_root
from clipadapt.utils import DownloadError, download


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, choices=sorted(DFER))
    ap.add_argument("--root", default=str(data_root()))
    a = ap.parse_args()
    spec = get_dfer(a.dataset)
    lists = dfer_root(a.dataset, a.root) / "annotation"
    lists.mkdir(parents=True, exist_ok=True)
    missing = [f for f in spec.list_files() if not (lists / f).exists()]
    names = ", ".join(missing) if len(missing) <= 2 else f"{missing[0]} ... {missing[-1]}, {len(missing)} files"
    hint = (f"get the annotation lists ({names}) from the annotation/ folder of https://github.com/SAADI-Ibtissam/"
            f"PE-CLIP on a machine with internet and put them in {lists}; this command then downloads nothing. The "
            f"frames need a licence: {spec.request}; put them under {dfer_root(a.dataset, a.root) / spec.anchor}.")
    for f in missing:
        download(LISTS_URL.format(f), lists / f, hint=hint)
    n = 0
    for split in spec.lists:
        for fold in range(1, spec.folds + 1):
            folders, _, _ = read_list(a.dataset, split, fold, a.root)
            check_frames(a.dataset, folders, a.root)
            n += len(folders)
    print(f"{a.dataset}: all {n} listed clips (splits x folds) found under {dfer_root(a.dataset, a.root)}")


if __name__ == "__main__":
    try:
        main()
    except (DownloadError, DatasetMissingError) as e:
        raise SystemExit(f"error: {e}") from None
