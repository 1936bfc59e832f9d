"""The API of methods that learn from labelled data, beside the test-time base class (`clipadapt.methods.tta`).

A method is a config dataclass plus a class registered under one lowercase hyphenated name (`clipadapt methods`
lists them). It adapts one of four kinds of backbone, given as an object:

- `"image"`: a timm `VisionTransformer` with a linear head (CLIP's image tower, `models.vit.clip_image_tower`, or
  SPT's ImageNet-21k ViT);
- `"clip"`: an open_clip `CLIP` with one text per class (`ClassTexts`); the model classifies clips of frames
  (videos x T x 3 x H x W) by the cosine of video and text features, as PE-CLIP does (images: clips of one frame);
- `"vl"`: VL-PET's encoder-decoder `models.seq2seq.VLModel`;
- `"embeddings"`: frozen embeddings, given as their dimension (an `int`).

`method.apply(backbone, data)` changes the backbone in place where it can and returns the model to train: exactly
the parameters that require grad are what the method trains. `trained_state(model)` is only what it trained (plus
what `apply` decided from the data, `structure`, e.g. SPT's allocation), `save` writes both atomically, and
`load_trained` (in `clipadapt.methods`) puts them onto a fresh backbone with identical outputs.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..models.seq2seq import VLModel
from ..utils import atomic_write

BACKBONES = {
    "image": "a timm VisionTransformer with a linear head (CLIP's image tower)",
    "clip": "an open_clip CLIP with one text per class (ClassTexts)",
    "vl": "VL-PET's encoder-decoder VLModel",
    "embeddings": "frozen embeddings (their dimension, an int)",
}
FAMILIES = ("zero-shot", "head", "full", "peft", "prompts", "embeddings", "test-time")
WEIGHTS, CONFIG = "weights.pt", "method.json"


def option(default: Any, help: str, paper: Any = None, minimum: float | None = None):
    """A config field that says what it means and, where the paper states it, the paper's value (None: not stated
    there, or not a paper setting); `minimum`: the smallest value that builds a working method (None passes)."""
    meta = {"help": help, "paper": paper, "minimum": minimum}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class MethodConfig:
    """A method without options."""


def check_minimums(name: str, cfg) -> None:
    """A field below the `minimum` its `option` states (a rank of 0, no epochs) is an error naming it."""
    for f in dataclasses.fields(cfg):
        low, value = f.metadata.get("minimum"), getattr(cfg, f.name)
        if low is not None and value is not None and value < low:
            raise ValueError(f"{name}: {f.name} must be at least {low}, got {value} ({f.metadata.get('help', '')})")


def config_help(config_class) -> list[dict]:
    """One row per field of a config dataclass: name, default, paper value, help."""
    return [{"field": f.name, "default": f.default if f.default is not dataclasses.MISSING else f.default_factory(),
             "paper": f.metadata.get("paper"), "help": f.metadata.get("help", "")}
            for f in dataclasses.fields(config_class)]


@dataclass
class ClassTexts:
    """The `"clip"` backbone: an open_clip CLIP, its tokenizer and the text of each class, in label order.
    `temperature`: logits are cosine / temperature; None (default) uses the model's own learned `logit_scale`
    (PE-CLIP's chapter fixes 0.01, as the official FERPA model)."""
    clip: nn.Module
    tokenizer: Any
    texts: list[str]
    temperature: float | None = None

    def __post_init__(self):
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"temperature must be above 0 (logits = cosine / temperature), got {self.temperature}; "
                             "leave it None to use the model's own logit_scale")


def backbone_kind(backbone) -> str:
    """Which of BACKBONES `backbone` is; a clear error for anything else."""
    if isinstance(backbone, ClassTexts):
        return "clip"
    if isinstance(backbone, int) and not isinstance(backbone, bool):
        return "embeddings"
    from timm.models.vision_transformer import VisionTransformer
    if isinstance(backbone, VisionTransformer):
        return "image"
    if isinstance(backbone, VLModel):
        return "vl"
    raise TypeError(f"a {type(backbone).__name__} is not a backbone the methods know; give one of: "
                    + "; ".join(f"{k}: {v}" for k, v in BACKBONES.items()))


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters of `model` that require grad, by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


class Method:
    """A method that learns from labelled data: PEFT modules, prompts, heads, probes, full fine-tuning."""
    name: ClassVar[str] = ""                 # set by `register`
    title: ClassVar[str] = ""                # how tables and plots show it
    family: ClassVar[str] = ""               # one of FAMILIES
    backbones: ClassVar[tuple[str, ...]] = ()
    chapter: ClassVar[str] = ""              # where the book explains it
    kind: ClassVar[str] = "labelled"
    needs_data: ClassVar[bool] = False       # apply() ranks or fits something on the training data
    config_class: ClassVar[type] = MethodConfig

    def __init__(self, cfg=None, **overrides):
        if cfg is not None and overrides:
            raise ValueError(f"{self.name}: give either a config or field overrides, not both")
        if cfg is None:
            names = {f.name for f in dataclasses.fields(self.config_class)}
            unknown = sorted(set(overrides) - names)
            if unknown:
                raise ValueError(f"{self.name} has no option {', '.join(map(repr, unknown))}; its options: "
                                 f"{', '.join(sorted(names)) or 'none'}")
            cfg = self.config_class(**overrides)
        if dataclasses.is_dataclass(cfg):
            check_minimums(self.name, cfg)
        self.cfg = cfg
        self.structure: dict = {}   # what apply() decided from the data (JSON-able), saved with the weights
        self.info: dict = {}        # what apply() measured (e.g. seconds spent ranking)

    # ---- what a subclass writes
    def _apply(self, backbone, kind: str, data) -> nn.Module:
        raise NotImplementedError

    # ---- the API
    def apply(self, backbone, data=None) -> nn.Module:
        """Make `backbone` this method (in place where it can) and return the model to train. `data`: the labelled
        training set, for methods that rank or fit something on it (`needs_data`)."""
        kind = backbone_kind(backbone)
        if kind not in self.backbones:
            raise ValueError(f"{self.name} adapts {' or '.join(BACKBONES[b] for b in self.backbones)}, not "
                             f"{BACKBONES[kind]}; `clipadapt methods` lists each method's backbones")
        if self.needs_data and data is None and not self.structure:
            raise ValueError(f"{self.name} ranks or fits on the labelled training images: pass apply(backbone, data)")
        return self._apply(backbone, kind, data)

    def trainable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return trainable(model)

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
        """AdamW groups: every trainable parameter at `lr` (methods with per-part rates override this)."""
        return [{"params": list(self.trainable(model).values()), "lr": lr, "weight_decay": weight_decay}]

    def stored(self, model: nn.Module) -> int:
        """Numbers to keep per task beyond the shared backbone (what trained, plus any positions of sparse entries)."""
        return sum(p.numel() for p in self.trainable(model).values())

    def extra_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Buffers that training (or apply) set and a fresh backbone does not have; none by default."""
        return {}

    def trained_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Only what this method trained (and its extra state), on the CPU."""
        state = {n: p.detach().cpu().clone() for n, p in self.trainable(model).items()}
        state.update({n: t.detach().cpu().clone() for n, t in self.extra_state(model).items()})
        return state

    def describe(self) -> dict:
        """The JSON that `save` writes beside the weights: name, config, structure."""
        return {"method": self.name, "config": dataclasses.asdict(self.cfg), "structure": self.structure,
                "format": 1}

    def save(self, model: nn.Module, folder: str | os.PathLike) -> Path:
        """Write what this method trained to `folder` (weights.pt + method.json), each file atomically."""
        folder = Path(folder)
        state = self.trained_state(model)
        for n, t in state.items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ValueError(f"{self.name}: trained tensor {n} has NaN or inf; not saving a broken model")
        atomic_write(folder / WEIGHTS, lambda p: torch.save(state, p))
        atomic_write(folder / CONFIG, lambda p: p.write_text(json.dumps(self.describe(), indent=1)))
        return folder

    def load_into(self, model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
        """Put a `trained_state` into a model this method built; every trained tensor must be there, nothing else."""
        expected = set(self.trainable(model)) | set(self.extra_state(model))
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"{self.name}: the saved weights do not fit this backbone (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}); load them onto the backbone they were trained on")
        own = dict(model.named_parameters()) | dict(model.named_buffers())
        with torch.no_grad():
            for n, t in state.items():
                if own[n].shape != t.shape:
                    raise ValueError(f"{self.name}: saved {n} has shape {tuple(t.shape)}, this backbone's "
                                     f"{tuple(own[n].shape)}; load onto the backbone they were trained on")
                own[n].copy_(t)
        return model


def config_from_dict(config_class, values: dict):
    """A config dataclass from `dataclasses.asdict` output read back from JSON (nested configs, tuples)."""
    import typing
    hints = typing.get_type_hints(config_class)
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{config_class.__name__} has no field {', '.join(unknown)}: the saved method comes from "
                         "another version of clipadapt; retrain it")
    kw = {}
    for name, v in values.items():
        nested = [a for a in (typing.get_args(hints[name]) or (hints[name],)) if dataclasses.is_dataclass(a)]
        if isinstance(v, dict) and nested:
            v = config_from_dict(nested[0], v)
        elif isinstance(v, list):
            v = tuple(v)
        kw[name] = v
    return config_class(**kw)
