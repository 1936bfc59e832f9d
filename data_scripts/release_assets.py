"""Pack the cached tiny models as this version's release assets (`make release-assets`, after `make assets`):

    python data_scripts/release_assets.py                  # into dist/assets/
    python data_scripts/release_assets.py --out DIR

writes tiny-clip.tar, tiny-vl-bart.tar and SHA256SUMS (deterministic tars: the same cache gives the same sha256s).
Upload the three files to the GitHub release of the tag v<version>, e.g.

    gh release upload v0.1.0 dist/assets/* --clobber

and `python data_scripts/build_ci_assets.py` (the Colab install cell runs it) fetches them instead of building.
"""
from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from clipadapt.models.pretrain import clip_asset  # noqa: E402
from clipadapt.models.release import SUMS, pack, write_sums  # noqa: E402
from clipadapt.models.seq2seq import lm_asset  # noqa: E402
from clipadapt.utils import ChecksumError  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("dist/assets"), help="the folder to write (default dist/assets)")
    args = ap.parse_args(argv)
    try:
        tars = [pack(asset, args.out) for asset in (clip_asset(), lm_asset())]
    except (FileNotFoundError, ChecksumError) as e:   # never publish a missing or damaged build
        sys.exit(f"error: {e}")
    sums = write_sums(args.out, [t.name for t in tars])
    print(sums.read_text(), end="")
    print(f"wrote {', '.join(t.name for t in tars)} and {SUMS} to {args.out}; upload them to the release with\n"
          f"    gh release upload v{version('clipadapt')} {args.out}/* --clobber")
    return args.out


if __name__ == "__main__":
    main()
