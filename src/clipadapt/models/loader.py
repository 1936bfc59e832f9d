"""One function loads every CLIP the book uses, always through open_clip.

- paper: `load_clip("ViT-B-16", "openai")`: open_clip's weights by tag, with the tag's own preprocessing and a
  configurable cache dir. Offline (HF_HUB_OFFLINE=1) a tag that is not cached fails at once and says how to
  pre-download it.
- a local checkpoint: `load_clip("ViT-B-16", "/path/to/weights.pt")`, same function, same preprocessing code.
- ci: `load_clip("clipadapt-tiny", "microworld-v1")`: open_clip's `CLIP` class with the small config in
  `configs/clipadapt-tiny.json`, pretrained by `data_scripts/build_ci_assets.py` on the micro-world.
"""
from __future__ import annotations

import copy
import difflib
import os
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from ..profiles import get_profile
from ..utils import cache_dir, hub_offline
from .pretrain import check_tiny_checkpoint, tiny_checkpoint_path
from .tiny import TINY_NAME, TINY_TAG, register_configs

PAPER_DEFAULT = ("ViT-B-16", "openai")


class ModelError(ValueError):
    """An unknown model name or pretrained tag; the message lists what is known."""


class OfflineWeightsError(RuntimeError):
    """Weights that need the network were asked for on a machine that is offline."""


class CheckpointError(ValueError):
    """A local checkpoint file that cannot be read or does not fit the architecture; the message says what to do."""


@dataclass
class LoadedCLIP:
    model: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]   # the evaluation transform of this model/tag
    tokenizer: Callable[..., torch.Tensor]
    name: str
    pretrained: str | None

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return size[0] if isinstance(size, (tuple, list)) else int(size)


def known_models() -> list[str]:
    import open_clip
    register_configs()
    return list(open_clip.list_models())


def load_clip(name: str, pretrained: str | os.PathLike | None = None, *, cache: str | os.PathLike | None = None,
              device: str | torch.device = "cpu") -> LoadedCLIP:
    """Build open_clip model `name` with weights `pretrained`: a tag, a local file, or None (random init)."""
    import open_clip
    register_configs()
    models = open_clip.list_models()
    if name not in models:
        close = difflib.get_close_matches(name, models, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ModelError(f"unknown model {name!r}.{hint} Known models: {TINY_NAME} (ci) and open_clip's "
                         f"{len(models) - 1} architectures (open_clip.list_models()).")
    tag = None if pretrained is None else str(pretrained)
    if name == TINY_NAME and tag == TINY_TAG:
        path = tiny_checkpoint_path()
        if not path.exists():
            raise FileNotFoundError(f"the tiny CLIP ({TINY_NAME}/{TINY_TAG}) is not built yet at {path}. Build it "
                                    "with:\n    python data_scripts/build_ci_assets.py\n(or call "
                                    "clipadapt.models.pretrain.ensure_tiny_clip() in a notebook).")
        base = _tiny_from_file(str(path), path.stat().st_mtime_ns, str(device))
        return replace(base, model=copy.deepcopy(base.model), pretrained=TINY_TAG)
    local = tag is not None and (Path(tag).is_file() or Path(tag).suffix in (".pt", ".pth", ".bin", ".safetensors")
                                 or os.sep in tag)
    if local and not Path(tag).is_file():
        raise FileNotFoundError(f"checkpoint file {tag} does not exist")
    if local and Path(tag).stat().st_size == 0:
        raise CheckpointError(f"checkpoint file {tag} is empty (0 bytes): a copy or download that did not finish. "
                              "Copy or download it again.")
    if tag is not None and not local:
        tags = [TINY_TAG] if name == TINY_NAME else open_clip.list_pretrained_tags_by_model(name)
        if tag not in tags:
            close = difflib.get_close_matches(tag, tags, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ModelError(f"unknown pretrained tag {tag!r} for {name}.{hint} Known tags: {', '.join(tags) or 'none'}, "
                             "or give the path of a local checkpoint file.")
    cache_path = str(cache) if cache is not None else str(cache_dir() / "open_clip")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=tag, cache_dir=cache_path,
                                                                     device=device)
    except Exception as e:
        if local:   # unreadable bytes (pickle/zip errors) or weights of another architecture (shape/assert errors)
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise CheckpointError(
                f"checkpoint file {tag} could not be loaded into {name} ({type(e).__name__}: {first}). Check that it is a "
                f"{name} checkpoint (a state dict saved with torch.save, or open_clip's own file) and that the file "
                "is complete; the model name must match the architecture the weights were trained with.") from e
        if not isinstance(e, RuntimeError):
            raise
        if tag is not None and ("download" in str(e).lower() or hub_offline()):
            raise OfflineWeightsError(
                f"weights {name}/{tag} are not in the cache {cache_path} and could not be downloaded "
                f"({'HF_HUB_OFFLINE=1 is set' if hub_offline() else 'no network'}). On a machine with internet run\n"
                f"    python data_scripts/download_weights.py --model {name} --pretrained {tag} --cache {cache_path}\n"
                "then copy that folder here (or pass cache=...)."
            ) from e
        raise
    model.eval()
    return LoadedCLIP(model, preprocess, open_clip.get_tokenizer(name), name, None if pretrained is None else str(pretrained))


@lru_cache(maxsize=2)
def _tiny_from_file(path: str, mtime_ns: int, device: str) -> LoadedCLIP:
    """The tiny CLIP read once per process and file version, after checking its sha256; `load_clip` hands out deep
    copies (ci loads it for every stream and method, and a copy is about 20 times faster than a read)."""
    check_tiny_checkpoint(Path(path))
    return load_clip(TINY_NAME, path, device=device)


def load_backbone(profile: str, paper_model: tuple[str, str] = PAPER_DEFAULT, device: str | None = None) -> LoadedCLIP:
    """The chapter backbone of a profile: the tiny CLIP on `ci`, `paper_model` (name, tag) on `paper`."""
    prof = get_profile(profile)
    dev = device or prof.device
    if prof.name == "ci":
        return load_clip(TINY_NAME, TINY_TAG, device=dev)
    return load_clip(*paper_model, device=dev)
