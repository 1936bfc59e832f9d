"""Pre-download open_clip weights on a machine with internet, to copy to an offline machine (paper profile).

    python data_scripts/download_weights.py --model ViT-B-16 --pretrained openai --cache ~/.cache/clipadapt/open_clip
"""
from __future__ import annotations

import argparse
import os

from clipadapt.models import OfflineWeightsError, load_clip
from clipadapt.utils import cache_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="open_clip architecture, e.g. ViT-B-16")
    ap.add_argument("--pretrained", required=True, help="open_clip pretrained tag, e.g. openai")
    ap.add_argument("--cache", default=str(cache_dir() / "open_clip"), help="folder to download into")
    args = ap.parse_args()
    offline = os.environ.get("HF_HUB_OFFLINE", "0")
    try:
        loaded = load_clip(args.model, args.pretrained, cache=args.cache)
    except OfflineWeightsError:
        if offline.lower() not in ("1", "true", "yes", "on"):
            raise
        raise SystemExit(f"error: HF_HUB_OFFLINE={offline} is set in this environment, so the weights "
                         f"{args.model}/{args.pretrained} cannot be downloaded (they are not in {args.cache}). This "
                         "script is the download step: run it with the variable unset, e.g.\n    HF_HUB_OFFLINE=0 "
                         f"python data_scripts/download_weights.py --model {args.model} --pretrained {args.pretrained} "
                         f"--cache {args.cache}") from None
    n = sum(p.numel() for p in loaded.model.parameters())
    print(f"{args.model}/{args.pretrained}: {n / 1e6:.1f} M parameters cached in {args.cache}")


if __name__ == "__main__":
    main()
