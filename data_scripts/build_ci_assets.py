"""Get the ci profile's assets into the cache (a no-op when present, checked against their sha256): the tiny CLIP
pretrained on the micro-world, then the tiny VL-BART of the VL-PET chapter pretrained on its captions over the tiny
CLIP's features. Each is first fetched from this version's release (verified; see clipadapt.models.release) and
built here when that fails: offline (HF_HUB_OFFLINE=1, as under make), CLIPADAPT_ASSETS_URL=none, no asset for this
version or a checksum mismatch; one line says which.

    python data_scripts/build_ci_assets.py                       # fetch or build what is missing
    python data_scripts/build_ci_assets.py --force               # rebuild both here (the tiny VL-BART needs the CLIP)
    python data_scripts/build_ci_assets.py --force tiny-vl-bart  # rebuild the tiny VL-BART only
"""
from __future__ import annotations

import argparse
import json
import os
import shutil

CALLER_SET_OFFLINE = "HF_HUB_OFFLINE" in os.environ   # the release is fetched unless the caller is offline
os.environ.setdefault("HF_HUB_OFFLINE", "1")          # building needs no model hub (set before any hub import)

from clipadapt.models.pretrain import (  # noqa: E402  # noqa: E402
    PretrainConfig,
    check_tiny_checkpoint,
    clip_asset,
    history_path,
    pretrain_tiny_clip,
    tiny_checkpoint_path,
)
from clipadapt.models.release import fetch  # noqa: E402
from clipadapt.models.seq2seq import check_tiny_lm, lm_asset, pretrain_tiny_lm, tiny_lm_dir  # noqa: E402
from clipadapt.utils import hub_offline  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--force", nargs="?", const="all", choices=("all", "tiny-vl-bart"),
                    help="rebuild here even when cached: both models (default) or only the tiny VL-BART")
    args = ap.parse_args()
    offline = CALLER_SET_OFFLINE and hub_offline()   # the caller's value: the default above is not theirs
    path = tiny_checkpoint_path()
    if path.exists() and history_path(path).exists() and args.force != "all":
        check_tiny_checkpoint(path)
        print(f"tiny CLIP: cached at {path} (sha256 checked)")
    elif args.force == "all" or not fetch(clip_asset(), offline=offline):
        hist = pretrain_tiny_clip(PretrainConfig(), path)
        last = {k: round(v[-1], 1) for k, v in hist["eval"].items()}
        print(f"tiny CLIP: trained in {hist['train_seconds']} s, zero-shot top-1 {json.dumps(last)}; saved to {path}")
    lm_dir = tiny_lm_dir()
    if (lm_dir / "visual.pt").exists() and not args.force:
        check_tiny_lm(lm_dir)
        print(f"tiny VL-BART: cached at {lm_dir} (sha256 checked)")
        return
    if args.force and lm_dir.exists():
        shutil.rmtree(lm_dir)
    if not args.force and fetch(lm_asset(), offline=offline):
        return
    hist = pretrain_tiny_lm(out_dir=lm_dir)
    last = {k: round(hist[k][-1], 3) for k in ("denoise", "caption", "match")}
    print(f"tiny VL-BART: trained in {hist['train_seconds']} s, final losses {json.dumps(last)}; saved to {lm_dir}")


if __name__ == "__main__":
    main()
