"""The arena's robustness track: Tent or BATCLIP on top of every adapted model on corrupted streams, through one
test-time view of both backbones (`feature_view`, `OnTop`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data.microworld import LabelledSet
from ..data.streams import GeneratedC
from ..eval import accuracy
from ..methods.batclip import batclip_losses
from ..methods.tta import entropy, layer_norms
from ..models.loader import load_backbone
from ..profiles import get_profile
from ..transforms import preprocess_batch
from .core import ArenaConfig, FramePooled, ImagesAsClips, _runs, get_method

TEST_TIME = ("none", "Tent", "BATCLIP")


def feature_view(model: nn.Module):
    """images -> (logits, unnormalised image features, normalised class vectors), the three things test-time losses
    need, for either arena backbone: CLIP with text classifiers (the class vectors are the class texts' features,
    recomputed on every call so the text tower can adapt) or the image tower with a linear head (its rows)."""
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, ImagesAsClips):
        def view(x):
            image, text = model.inner.features(x.unsqueeze(1))
            return model.inner.scale() * nn.functional.normalize(image, dim=-1) @ text.T, image, text
        return view
    if isinstance(model, FramePooled) and isinstance(model.vit, VisionTransformer):
        model = model.vit
    if isinstance(model, VisionTransformer):
        def view(x):
            f = model.forward_head(model.forward_features(x), pre_logits=True)
            return model.head(f), f, nn.functional.normalize(model.head.weight, dim=-1)
        return view
    raise ValueError(f"no test-time view of a {type(model).__name__}: test-time adaptation on top needs CLIP with "
                     "text classifiers (ImagesAsClips) or a timm VisionTransformer with a linear head")


class OnTop(nn.Module):
    """A test-time method on top of an adapted classifier; each call predicts, then adapts (online, continual).

    - "none": the adapted model as it is;
    - "Tent": entropy of the predictions, over the LayerNorms of the image path (Wang et al., ICLR 2021);
    - "BATCLIP": entropy - projection matching - inter-class separation (`batclip.batclip_losses`), over the
      LayerNorms of every tower (both for CLIP; the one image tower for the linear-head classifiers, whose class
      vectors are the head's rows in place of class texts).
    Everything else stays frozen, including what the arena's method trained."""

    def __init__(self, model: nn.Module, kind: str, optimizer: str = "adamw", lr: float = 1e-3,
                 weight_decay: float = 0.01):
        super().__init__()
        if kind not in TEST_TIME:
            raise ValueError(f"unknown test-time method {kind!r}; choose from {', '.join(TEST_TIME)}")
        self.model, self.kind, self.view = model, kind, feature_view(model)
        model.eval().requires_grad_(False)
        image_path = model.inner.clip.visual if isinstance(model, ImagesAsClips) else model
        norms = layer_norms(image_path if kind == "Tent" else model) if kind != "none" else []
        for ln in norms:
            ln.requires_grad_(True)
        self.params = [p for ln in norms for p in ln.parameters()]
        opts = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}
        if optimizer not in opts:
            raise ValueError(f"unknown optimizer {optimizer!r} for test-time adaptation; use 'adamw' or 'adam'")
        opt = opts[optimizer]
        self.optimizer = opt(self.params, lr=lr, weight_decay=weight_decay) if self.params else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.optimizer is None:
            with torch.no_grad():
                return self.view(images)[0]
        with torch.enable_grad():
            logits, image, classes = self.view(images)
            if self.kind == "Tent":
                loss = entropy(logits)
            else:
                t = batclip_losses(logits, image, classes)
                loss = t["entropy"] - t["pm"] - t["sp"]
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return logits.detach()


@dataclass(frozen=True)
class RobustnessConfig:
    """The corrupted streams and the test-time optimiser (the BATCLIP chapter's set-up of the profile)."""
    corruptions: tuple[str, ...] = ("gaussian_noise", "contrast")   # sensor noise, poor light
    severity: int = 5
    n_images: int = 400             # images per stream
    batch_size: int = 50
    optimizer: str = "adamw"
    lr: float = 5e-3
    weight_decay: float = 0.01


def robustness(methods, task, source=None, seeds=(0, 1, 2), cfg: ArenaConfig | None = None,
               rcfg: RobustnessConfig | None = None, profile: str = "ci", show_progress: bool = True, store=None):
    """Adapt every method on the task's few-shot sample (as `run`), then run each corrupted stream through it online
    with every test-time method on top, each from the adapted weights. `source`: a `clipadapt.data.streams` source
    with the task's classes (None: the generated corruptions of the task's own test images). Methods without a
    test-time view (the contrastive head's scikit-learn classifier) are left out and named in a warning. `store`
    keeps the adapted jobs (as `run`'s).

    A tidy DataFrame: method, family, seed, corruption, severity, test_time, accuracy (%), clean (the method's
    accuracy on the clean test split), images.
    """
    import copy
    import warnings

    import pandas as pd

    cfg, rcfg = cfg or ArenaConfig(), rcfg or RobustnessConfig()
    device = get_profile(profile).device
    if source is None:
        source = GeneratedC(LabelledSet(task.name, task.x_test, task.y_test, tuple(task.classes)))
    if len(source) > rcfg.n_images:
        source = source.head(rcfg.n_images)
    if tuple(source.classes) != tuple(task.classes):
        raise ValueError(f"the corrupted source {source.name} has other classes than task {task.name}: the adapted "
                         "heads would predict the wrong labels; pass a source with the task's classes in its order")
    skipped = [m for m in methods if get_method(m).family == "embeddings"]
    if skipped:
        warnings.warn(f"no test-time adaptation on top of {', '.join(skipped)}: a classifier on frozen embeddings has "
                      "no LayerNorm to adapt; left out of the robustness track", stacklevel=2)
    preprocess = load_backbone(profile).preprocess
    streams = {}
    rows = []
    runs = _runs([m for m in methods if m not in skipped], [task], seeds, cfg, profile, show_progress,
                 desc="arena robustness", store=store, key=("robustness",))
    for _, method, seed, built, row in runs:
        adapted = copy.deepcopy(built.model.state_dict())
        for c in rcfg.corruptions:
            if (c, seed) not in streams:   # one stream per corruption and seed, the same for every method
                streams[(c, seed)] = source.stream(c, rcfg.severity, seed)
            x, y = streams[(c, seed)]
            for kind in TEST_TIME:
                built.model.load_state_dict(adapted)
                m = OnTop(built.model, kind, rcfg.optimizer, rcfg.lr, rcfg.weight_decay)
                pred = [m(preprocess_batch(preprocess, x[i:i + rcfg.batch_size]).to(device)).argmax(1).cpu().numpy()
                        for i in range(0, len(x), rcfg.batch_size)]
                rows.append({"method": method.name, "family": method.family, "seed": seed, "corruption": c,
                             "severity": rcfg.severity, "test_time": kind, "accuracy": accuracy(np.concatenate(pred), y),
                             "clean": row["value"], "images": len(y)})
    return pd.DataFrame(rows)
