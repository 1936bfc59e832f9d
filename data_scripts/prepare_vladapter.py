"""Restore VL-Adapter's image-text features and annotations for the VL-PET chapter's `paper` profile.

    python data_scripts/prepare_vladapter.py --root ~/.cache/clipadapt/data
    python data_scripts/prepare_vladapter.py --root ~/.cache/clipadapt/data --datasets COCO --limit-shards 2

The release lives on the HF Hub as `ylsung/VL-Adapter-datasets` (about 47 GB to download, about 132 GB once
restored): CLIP RN101 grid features of COCO, Visual Genome (GQA train), GQA testdev and NLVR2, and the VQA / GQA /
NLVR2 / COCO annotations. This script runs VL-Adapter's own restore tool (`tools/restore_datasets.py`, fetched at a
pinned commit) into <root>/vl-adapter/datasets, the layout `clipadapt.data.vladapter.load_vladapter` reads. The tool
downloads one shard at a time, skips what is already restored (so an interrupted run resumes) and checks sizes and
CRCs of the restored files. Options it does not know are passed on to it (`--datasets`, `--only`,
`--limit-shards`, `--keep-cache`, `--local-root`; see its --help).

The paper's video-text tasks (TVQA, How2QA, TVC, YC2C) use VALUE's features, which cannot be downloaded at present
(their storage answers "Public access is not permitted"), so nothing here prepares them.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from clipadapt.data.registry import data_root
from clipadapt.data.vladapter import vladapter_root
from clipadapt.utils import DownloadError, download

COMMIT = "13f897d4d4d5e2c9951da7a8dcf858cf909d1445"
TOOL_URL = f"https://raw.githubusercontent.com/ylsung/VL_adapter/{COMMIT}/tools/restore_datasets.py"


def restore_command(tool: Path, out: Path, passthrough: list[str]) -> list[str]:
    return [sys.executable, str(tool), "--out", str(out), *passthrough]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(data_root()), help="the data root (the chapter's data_root parameter)")
    ap.add_argument("--tool", help="a local copy of restore_datasets.py (default: download it at the pinned commit)")
    a, passthrough = ap.parse_known_args(argv)
    out = vladapter_root(a.root)
    out.mkdir(parents=True, exist_ok=True)
    tool = Path(a.tool).expanduser() if a.tool else out.parent / f"restore_datasets-{COMMIT[:8]}.py"
    if not tool.exists():
        if a.tool:
            raise SystemExit(f"--tool {tool} does not exist")
        hint = (f"download {TOOL_URL} on a machine with internet and pass it with\n    python data_scripts/"
                f"prepare_vladapter.py --root {a.root} --tool PATH/TO/restore_datasets.py\n(the tool then downloads "
                "the release from the HF Hub, ylsung/VL-Adapter-datasets, so the restore itself needs a network)")
        download(TOOL_URL, tool, hint=hint)
    cmd = restore_command(tool, out, passthrough)
    print(" ".join(cmd), flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DownloadError as e:
        raise SystemExit(f"error: {e}") from None
