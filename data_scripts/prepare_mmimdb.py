"""Download and unpack MM-IMDb (Arevalo et al., 2017) for the contrastive-adaptation chapter's `paper` profile.

    python data_scripts/prepare_mmimdb.py --root ~/.cache/clipadapt/data
    python data_scripts/prepare_mmimdb.py --archive ~/Downloads/mmimdb.tar.gz

The archive (about 8 GB) comes from the dataset's page, http://lisi1.unal.edu.co/mmimdb/ ; it unpacks into
<root>/mmimdb/dataset/ (one .json and one .jpeg per movie), the layout `clipadapt.data.mmimdb.load_mmimdb` reads.
Re-running skips what is already there.
"""
from __future__ import annotations

import argparse
import tarfile
from pathlib import Path

from clipadapt.data.mmimdb import mmimdb_root
from clipadapt.data.registry import data_root
from clipadapt.utils import DownloadError, download

URL = "http://lisi1.unal.edu.co/mmimdb/mmimdb.tar.gz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(data_root()))
    ap.add_argument("--archive", help="a local copy of mmimdb.tar.gz")
    a = ap.parse_args()
    folder = mmimdb_root(a.root)
    if (folder / "dataset").is_dir():
        print(f"MM-IMDb: already at {folder}")
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    tar = Path(a.archive).expanduser() if a.archive else folder.parent / "mmimdb.tar.gz"
    if not tar.exists():
        hint = (f"download mmimdb.tar.gz from the dataset's page (http://lisi1.unal.edu.co/mmimdb/) on a machine "
                f"with internet and pass it with\n    python data_scripts/prepare_mmimdb.py --root {a.root} --archive "
                "PATH/TO/mmimdb.tar.gz")
        download(URL, tar, hint=hint)   # no checksum is published for this archive; an interrupted download resumes
    with tarfile.open(tar) as t:   # the archive holds mmimdb/dataset/...
        t.extractall(folder.parent, filter="data")
    if not (folder / "dataset").is_dir():
        raise SystemExit(f"unpacked {tar}, but {folder / 'dataset'} is missing; move the dataset folder there")
    print(f"MM-IMDb: unpacked to {folder}")


if __name__ == "__main__":
    try:
        main()
    except DownloadError as e:
        raise SystemExit(f"error: {e}") from None
