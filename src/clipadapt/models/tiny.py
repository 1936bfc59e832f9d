"""The project's tiny CLIP as an open_clip model: its name, tag and config (`configs/clipadapt-tiny.json`),
registered with open_clip. Pretraining is in `pretrain`, loading in `loader`."""
from __future__ import annotations

import json
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"
TINY_NAME = "clipadapt-tiny"
TINY_TAG = "microworld-v1"
_registered = False


def register_configs() -> None:
    """Make open_clip know the tiny config (once per process)."""
    global _registered
    if not _registered:
        import open_clip
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def tiny_config() -> dict:
    return json.loads((CONFIG_DIR / f"{TINY_NAME}.json").read_text())
