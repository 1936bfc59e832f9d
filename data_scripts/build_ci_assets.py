"""Build the ci profile's assets (cached; a no-op when present): the tiny CLIP pretrained on the micro-world, then
the tiny VL-BART of the VL-PET chapter pretrained on its captions over the tiny CLIP's features.

    python data_scripts/build_ci_assets.py            # build if missing
    python data_scripts/build_ci_assets.py --force    # rebuild
"""
from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from clipadapt.models.pretrain import tiny_checkpoint_path  # noqa: E402
from clipadapt.models.pretrain import PretrainConfig, history_path, pretrain_tiny_clip  # noqa: E402
from clipadapt.models.seq2seq import pretrain_tiny_lm, tiny_lm_dir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--force", action="store_true", help="rebuild even when the cached checkpoint exists")
    args = ap.parse_args()
    path = tiny_checkpoint_path()
    if path.exists() and history_path(path).exists() and not args.force:
        print(f"tiny CLIP: cached at {path}")
    else:
        hist = pretrain_tiny_clip(PretrainConfig(), path)
        last = {k: round(v[-1], 1) for k, v in hist["eval"].items()}
        print(f"tiny CLIP: trained in {hist['train_seconds']} s, zero-shot top-1 {json.dumps(last)}; saved to {path}")
    lm_dir = tiny_lm_dir()
    if (lm_dir / "visual.pt").exists() and not args.force:
        print(f"tiny VL-BART: cached at {lm_dir}")
        return
    if args.force and lm_dir.exists():
        import shutil
        shutil.rmtree(lm_dir)
    hist = pretrain_tiny_lm(out_dir=lm_dir)
    last = {k: round(hist[k][-1], 3) for k in ("denoise", "caption", "match")}
    print(f"tiny VL-BART: trained in {hist['train_seconds']} s, final losses {json.dumps(last)}; saved to {lm_dir}")


if __name__ == "__main__":
    main()
