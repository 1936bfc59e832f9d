"""The arena: the book's methods side by side on one backbone, one set of tasks and one measurement.

None of the five papers compares itself with the other four. Here every method starts from the same CLIP (the tiny
one on `ci`, OpenAI's ViT-B/16 on `paper`), sees the same few labelled images of a task, trains with the same loop
(`clipadapt.finetune.fit_classifier`: AdamW, cosine schedule, no augmentation; full fine-tuning at a tenth of the
learning rate) and is measured the same way:
accuracy on the task's test split, trainable and stored parameters, the memory of one training step
(`clipadapt.bench.training_memory`), seconds per step and the wall time of the whole adaptation.

Methods (`ARENA`, by name): zero-shot CLIP; a linear probe, full fine-tuning, LoRA (peft), bottleneck adapters and
SPT-LoRA on the image tower as a timm ViT (SPT's chapter); MaPLe prompts and PE-CLIP's adapters on the two towers
with text classifiers (PE-CLIP's chapter); VL-PET's gated adapters on the image tower (VL-PET's chapter); a
contrastive head on the frozen image embeddings with a logistic regression (the contrastive chapter). Image
classifiers are fed images (batch x 3 x H x W); the CLIP-text models see each image as a clip of one frame. Each
backbone has its own full fine-tuning as the reference for memory: the image tower with a linear head, and CLIP's
two towers with the text head.

Also here: face clips as a task (the CLIP-text models take clips whole; image classifiers average their frames'
features, `FramePooled`); the robustness track (`robustness`: Tent or BATCLIP on top of every adapted model on
corrupted streams, through one test-time view of both backbones, `feature_view` and `OnTop`); and the benchmark of
the papers' efficiency ratios (`benchmark`, `python -m clipadapt.arena bench`).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from .finetune import FitConfig
from .methods import build_method, method_class
from .methods.base import ClassTexts

TEMPLATE = "a photo of a {}."


@dataclass(frozen=True)
class ArenaConfig:
    """What every method shares: the few-shot sample and the training schedule; each method's own sizes."""
    shots: int = 16                 # labelled images per class (few-shot; the whole train800 if there are fewer)
    fit: FitConfig = dataclasses.field(default_factory=lambda: FitConfig(
        epochs=20, lr=3e-3, warmup_epochs=2, batch_size=32, eval_every=20, eval_last=1))
    full_lr_scale: float = 0.1      # full fine-tuning trains at this share of fit.lr (every weight moves; the rate of
                                    # the small modules would wash out pretraining: common practice, checked on ci)
    rank: int = 8                   # LoRA rank and adapter bottleneck (SPT's VTAB-1k setting)
    budget: int | None = None       # SPT-LoRA's backbone parameters (None: what LoRA of `rank` trains)
    n_ctx: int = 2                  # MaPLe / PE-CLIP prompt vectors per layer
    prompt_depth: int | None = None # blocks with prompts (None: every block, up to PE-CLIP's 9)
    head_epochs: int = 200          # the contrastive head's epochs (its chapter's ci setting: few rows, few updates)


@dataclass
class Built:
    model: nn.Module                # images -> logits over the task's classes (what trains: what requires grad)
    stored: int                     # numbers to keep per task beyond the shared backbone
    prepare_s: float = 0.0          # seconds spent before training (SPT's sensitivity pass and allocation)
    param_groups: list | None = None
    fit: Callable | None = None     # its own training instead of the shared loop: (train, test, seed) -> dict with
                                    # value, trainable, stored, train_mb, s_per_step (frozen-embedding methods)
    method: object = None           # the registered method that built it


@dataclass(frozen=True)
class ArenaMethod:
    """A row of the arena: a registered method (`clipadapt.methods`) on one of the arena's two backbones."""
    name: str                       # the row label (the method's title, or title and backbone)
    method: str                     # registry name
    backbone: str                   # "image tower" (a timm ViT with a linear head) or "CLIP" (both towers, text head)
    chapter_override: str | None = None

    @property
    def family(self) -> str:
        return method_class(self.method).family

    @property
    def chapter(self) -> str:
        return self.chapter_override or method_class(self.method).chapter


@dataclass
class Context:
    clip: object                    # a fresh LoadedCLIP (its own copy of the weights)
    classes: tuple[str, ...]
    train: torch.utils.data.Dataset
    cfg: ArenaConfig


ARENA: dict[str, ArenaMethod] = {m.name: m for m in (
    ArenaMethod("zero-shot", "zero-shot", "CLIP"),
    ArenaMethod("linear probe", "linear-probe", "image tower"),
    ArenaMethod("full fine-tuning", "full-finetune", "image tower"),
    ArenaMethod("LoRA", "lora", "image tower"),
    ArenaMethod("adapter", "adapter", "image tower"),
    ArenaMethod("SPT-LoRA", "spt-lora", "image tower"),
    ArenaMethod("VL-PET gated adapters", "vl-pet-large", "image tower"),
    ArenaMethod("full fine-tuning (CLIP)", "full-finetune", "CLIP", "PE-CLIP"),
    ArenaMethod("MaPLe prompts", "maple", "CLIP"),
    ArenaMethod("PE-CLIP adapters", "pe-clip-adapters", "CLIP"),
    ArenaMethod("contrastive head", "contrastive-head", "CLIP"),
)}


FULL = {"image tower": "full fine-tuning", "CLIP": "full fine-tuning (CLIP)"}   # each backbone's memory reference


def get_method(name: str) -> ArenaMethod:
    """An arena row by its label, or by registry name where one row has it (`lora`; `full-finetune` has two)."""
    if name in ARENA:
        return ARENA[name]
    rows = [m for m in ARENA.values() if m.method == name]
    if len(rows) == 1:
        return rows[0]
    if rows:
        raise ValueError(f"{name!r} runs on both arena backbones; choose {' or '.join(repr(m.name) for m in rows)}")
    if name.islower() and " " not in name:
        method_class(name)   # an unknown registry name: the error lists the close ones
    raise ValueError(f"{name!r} is a registered method the arena does not run; the arena's rows: {', '.join(ARENA)} "
                     "(registry names: " + ", ".join(dict.fromkeys(m.method for m in ARENA.values())) + ")")


# ---- building a row's model through the registry

def _vit(ctx: Context) -> nn.Module:
    from .models.vit import clip_image_tower
    return clip_image_tower(ctx.clip.model.visual, len(ctx.classes))


def _options(row: ArenaMethod, ctx: Context) -> dict:
    """The arena's shared sizes, for the config fields the method has."""
    cfg = ctx.cfg
    blocks = len(ctx.clip.model.visual.transformer.resblocks)
    shared = {"rank": cfg.rank, "budget": cfg.budget, "n_ctx": cfg.n_ctx, "depth": min(cfg.prompt_depth or 9, blocks),
              "sensitivity_batches": 4, "sensitivity_batch_size": 16}   # SPT: a quick ranking on 4 batches of 16
    fields = {f.name for f in dataclasses.fields(method_class(row.method).config_class)}
    return {k: v for k, v in shared.items() if k in fields and v is not None}


def build(row: ArenaMethod, ctx: Context) -> Built:
    """The row's model on a fresh backbone: its method from the registry applied to the image tower (fed images, or
    clips through `FramePooled`) or to CLIP with the task's class texts (fed clips; images as clips of one frame)."""
    if row.method == "contrastive-head":
        return _contrastive(ctx)
    method = build_method(row.method, **_options(row, ctx))
    if row.backbone == "image tower":
        model = method.apply(_vit(ctx), frames_of(ctx.train))   # on clips, a sensitivity pass sees their frames
        return Built(FramePooled(model), method.stored(model), method.info.get("ranking_s", 0.0), method=method)
    texts = [TEMPLATE.format(c) for c in ctx.classes]
    model = method.apply(ClassTexts(ctx.clip.model, ctx.clip.tokenizer, texts))
    return Built(ImagesAsClips(model), method.stored(model), method=method)


class ImagesAsClips(nn.Module):
    """A video model (clips x frames x 3 x H x W) used on images: each image is a clip of one frame (clips pass)."""

    def __init__(self, video_model: nn.Module):
        super().__init__()
        self.inner = video_model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner(images if images.dim() == 5 else images.unsqueeze(1))


class FramePooled(nn.Module):
    """An image classifier used on clips: the features before its head, averaged over the frames, then the head (the
    PE-CLIP chapter's pooling baseline); images pass through unchanged."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return self.vit(x)
        f = self.vit.forward_head(self.vit.forward_features(x.flatten(0, 1)), pre_logits=True)
        return self.vit.head(f.reshape(*x.shape[:2], -1).mean(1))


def frames_of(data):
    """A dataset of clips as a dataset of their frames, each with its clip's label (images pass unchanged)."""
    from torch.utils.data import TensorDataset
    if not isinstance(data, TensorDataset) or data.tensors[0].dim() != 5:
        return data
    x, y = data.tensors
    return TensorDataset(x.flatten(0, 1), y.repeat_interleave(x.shape[1]))


# ---- a contrastive head on frozen embeddings (the contrastive domain-adaptation chapter)

def _contrastive(ctx: Context) -> Built:
    """The frozen CLIP image embeddings of every image, a contrastive projection head trained on the labelled ones
    (`contrastive_da.train_head`: the authors' head and pair loss), and a logistic regression on its outputs (the
    downstream classifier of that chapter that needs no tuning)."""
    from .bench import training_memory
    from .finetune import batches, labels_of
    from .methods import contrastive_da as da
    clip = ctx.clip.model.eval().requires_grad_(False)

    @torch.no_grad()
    def embed(data):   # a clip's embedding is the mean of its frames'
        dev = next(clip.parameters()).device
        enc = lambda x: (clip.encode_image(x.flatten(0, 1)).reshape(*x.shape[:2], -1).mean(1) if x.dim() == 5
                         else clip.encode_image(x))
        return torch.cat([nn.functional.normalize(enc(x.to(dev)), dim=-1).float().cpu()
                          for x, _ in batches(data, 256)]).numpy()

    def fit(train, test, seed):
        x_tr, x_te = embed(train), embed(test)
        y_tr, y_te = labels_of(train).numpy(), labels_of(test).numpy()
        cfg = build_method("contrastive-head", epochs=ctx.cfg.head_epochs, seed=seed).cfg
        f = da.represent("head", "joint", {"image": x_tr}, y_tr, {"image": x_te}, cfg)
        clf = da.classifiers(seed)["LR"].fit(f.train, y_tr)
        head = da.ProjectionHead(x_tr.shape[1], cfg.out_dim)
        batch = torch.as_tensor(x_tr[:cfg.batch_size], dtype=torch.float32)
        mem = training_memory(head, lambda: da.pair_loss(head(batch), torch.as_tensor(y_tr[:cfg.batch_size])))
        steps = cfg.epochs * max(1, -(-round(len(x_tr) * (1 - cfg.monitor_fraction)) // cfg.batch_size))
        n = f.trainable + clf.coef_.size + clf.intercept_.size
        return {"value": 100 * float(np.mean(clf.predict(f.test) == y_te)), "trainable": n, "stored": n,
                "train_mb": mem["total_mb"], "s_per_step": f.fit_s / steps}
    return Built(clip, 0, fit=fit)


# ---- the runner

def few_shot(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """Positions of `shots` examples per class (all of a class's examples if it has fewer), drawn by `seed`."""
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.nonzero(labels == c)[0])[:shots] for c in np.unique(labels)]))


def step_memory_mb(model: nn.Module, data, batch_size: int) -> float:
    """The memory one training step holds at `batch_size` (weights, gradients and Adam, saved activations)."""
    from .bench import training_memory
    from .finetune import batches
    dev = next(model.parameters()).device
    x, y = (t.to(dev) for t in next(iter(batches(data, batch_size))))
    return training_memory(model, lambda: nn.functional.cross_entropy(model(x), y))["total_mb"]


def run(methods, tasks, seeds=(0, 1, 2), cfg: ArenaConfig | None = None, profile: str = "ci",
        show_progress: bool = True):
    """Adapt every method to every task from a fresh backbone per seed; a tidy DataFrame, one row per run.

    `tasks`: `clipadapt.data.vtab.Task`s. Columns: method, family, chapter, task, group, seed, metric ("accuracy"),
    value (%), trainable, total, stored (parameters), train_mb (memory of one training step), s_per_step,
    adapt_s (preparation + training seconds), shots.
    """
    import pandas as pd
    return pd.DataFrame([row for *_, row in _runs(methods, tasks, seeds, cfg or ArenaConfig(), profile, show_progress)])


def _runs(methods, tasks, seeds, cfg: ArenaConfig, profile: str, show_progress: bool, desc: str = "arena runs"):
    """Yield (task, method, seed, built, row) for every task, seed and method: the adapted model and its table row."""
    from .bench import count_parameters
    from .data.vtab import has_class_names
    from .finetune import fit_classifier, predict
    from .models.loader import load_backbone
    from .profiles import get_profile
    from .utils import progress, seed_everything
    device = get_profile(profile).device
    chosen = [get_method(m) for m in methods]
    for task in tasks:
        texts = [m.name for m in chosen if m.backbone == "CLIP" and m.family != "embeddings"]
        if texts and not has_class_names(task):
            raise ValueError(f"task {task.name!r} has only label numbers for class names, and {', '.join(texts)} "
                             "classify by the text of each class; choose tasks with names (VTAB-1k: "
                             f"{', '.join(_named_vtab1k())}) or leave those methods out")
    jobs = [(t, m, s) for t in tasks for s in seeds for m in chosen]
    data = {}
    for task, method, seed in progress(jobs, desc=desc, disable=not show_progress):
        if data.get("key") != (task.name, seed):   # one few-shot sample per task and seed, shared by all methods
            clip = load_backbone(profile)
            idx = few_shot(task.y_train, cfg.shots, seed)
            data = {"key": (task.name, seed), "test": _dataset(clip, task.x_test, task.y_test),
                    "train": _dataset(clip, task.x_train[idx], task.y_train[idx])}
        seed_everything(seed)
        ctx = Context(load_backbone(profile), tuple(task.classes), data["train"], cfg)
        t0 = time.perf_counter()
        built = build(method, ctx)
        built.model.to(device)
        counts = count_parameters(built.model)
        stored = built.stored
        if built.fit is not None:   # frozen embeddings and a small head of its own
            r = built.fit(data["train"], data["test"], seed)
            value, train_mb, s_step, stored = r["value"], r["train_mb"], r["s_per_step"], r["stored"]
            counts = type(counts)(r["trainable"], counts.total + r["trainable"])
        elif counts.trainable:
            train_mb = step_memory_mb(built.model, data["train"], cfg.fit.batch_size)
            lr = cfg.fit.lr * (cfg.full_lr_scale if method.family == "full" else 1.0)
            fit = dataclasses.replace(cfg.fit, seed=seed, lr=lr)
            r = fit_classifier(built.model, data["train"], data["test"], fit, param_groups=built.param_groups)
            value, s_step = r["last"], r["s_per_step"]
        else:
            train_mb, s_step = float("nan"), float("nan")
            value = 100 * float(np.mean(predict(built.model, data["test"]) == task.y_test))
        yield task, method, seed, built, {
            "method": method.name, "family": method.family, "chapter": method.chapter, "task": task.name,
            "group": task.group, "seed": seed, "metric": "accuracy", "value": value, "trainable": counts.trainable,
            "total": counts.total, "stored": stored, "train_mb": train_mb, "s_per_step": s_step,
            "adapt_s": time.perf_counter() - t0, "shots": cfg.shots}


# ---- robustness: test-time adaptation on top of every adapted model

TEST_TIME = ("none", "Tent", "BATCLIP")


def feature_view(model: nn.Module):
    """images -> (logits, unnormalised image features, normalised class vectors), the three things test-time losses
    need, for either arena backbone: CLIP with text classifiers (the class vectors are the class texts' features,
    recomputed on every call so the text tower can adapt) or the image tower with a linear head (its rows)."""
    from timm.models.vision_transformer import VisionTransformer

    from .methods.peclip import TEMPERATURE
    if isinstance(model, ImagesAsClips):
        def view(x):
            image, text = model.inner.features(x.unsqueeze(1))
            return nn.functional.normalize(image, dim=-1) @ text.T / TEMPERATURE, image, text
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
        from .methods.tta import layer_norms
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
        from .methods.batclip import batclip_losses
        from .methods.tta import entropy
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
               rcfg: RobustnessConfig | None = None, profile: str = "ci", show_progress: bool = True):
    """Adapt every method on the task's few-shot sample (as `run`), then run each corrupted stream through it online
    with every test-time method on top, each from the adapted weights. `source`: a `clipadapt.data.streams` source
    with the task's classes (None: the generated corruptions of the task's own test images). Methods without a
    test-time view (the contrastive head's scikit-learn classifier) are left out and named in a warning.

    A tidy DataFrame: method, family, seed, corruption, severity, test_time, accuracy (%), clean (the method's
    accuracy on the clean test split), images.
    """
    import copy
    import warnings

    import pandas as pd

    from .data.microworld import LabelledSet
    from .data.streams import GeneratedC
    from .eval import accuracy
    from .models.loader import load_backbone
    from .transforms import preprocess_batch
    from .profiles import get_profile
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
                 desc="arena robustness")
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


def _named_vtab1k() -> list[str]:
    from .data.vtab import CLASSNAMES_KEY
    return ["cifar", *CLASSNAMES_KEY]


def _dataset(clip, images, labels):
    """Images in memory (a small uint8 array) preprocessed once; anything larger or read lazily from files (paper:
    VTAB-1k test splits of up to 26k images at 224 px) transformed per batch."""
    from torch.utils.data import TensorDataset

    from .finetune import ImageSet
    from .transforms import preprocess_batch
    if isinstance(images, np.ndarray) and images.ndim == 5:   # clips: n x T x H x W x 3, every frame preprocessed
        x = preprocess_batch(clip.preprocess, images.reshape(-1, *images.shape[2:]))
        return TensorDataset(x.reshape(*images.shape[:2], *x.shape[1:]), torch.as_tensor(labels, dtype=torch.long))
    if isinstance(images, np.ndarray) and len(images) <= 5000:
        return TensorDataset(preprocess_batch(clip.preprocess, images), torch.as_tensor(labels, dtype=torch.long))
    return ImageSet(images, labels, clip.preprocess)


def summary(df):
    """Mean and standard deviation over seeds per method and task group, with the method's costs."""
    g = df.groupby(["method", "family", "group"])
    out = g["value"].agg(["mean", "std"]).join(g[["trainable", "stored", "train_mb", "s_per_step"]].mean())
    return out.reset_index()


# ---- the benchmark: the ratios the papers' efficiency claims rest on, measured in one run

RATIO_NEEDS = {   # ratio -> arena methods it needs (test-time methods come from clipadapt.methods' registry)
    "BATCLIP s per batch / zero-shot s per batch": ("zero-shot",),
    "TPT s per image / BATCLIP s per image": ("zero-shot",),
    "SPT sensitivity pass s / one training epoch s": ("SPT-LoRA",),
    "training memory / full fine-tuning of the same backbone": ("full fine-tuning", "full fine-tuning (CLIP)"),
}


def benchmark(methods=None, profile: str = "ci", task: str = "digits", repeats: int = 5, seed: int = 0,
              cfg: ArenaConfig | None = None, show_progress: bool = True) -> dict:
    """Measure, in this one process, what the efficiency claims compare; returns {"ratios": rows, "raw": timings}.

    - test time, on one batch of the task's test images (the BATCLIP chapter's ci batch of 50): BATCLIP's adapting
      forward pass against zero-shot inference, and TPT's per-image cost (64 views, one step) against BATCLIP's
      per-image share of its batch;
    - SPT's sensitivity pass (16 batches of 32, as the official default) against one epoch of fine-tuning on the
      task's 1,000 training images (train800 + val200, batch 64, as SPT trains);
    - every method's memory of one training step against full fine-tuning of the same backbone (the image tower
      with a linear head, or CLIP's two towers with the text head), and its trainable parameters against its total.
    Every timing is the median of `repeats` after one warm-up; the raw values are returned too.
    """
    from .bench import count_parameters, time_per_step
    from .data import vtab
    from .finetune import FitConfig, fit_classifier
    from .methods import spt as spt_mod
    from .models.loader import load_backbone
    from .profiles import get_profile
    from .utils import progress, seed_everything
    cfg = cfg or ArenaConfig()
    dev = get_profile(profile).device
    methods = [get_method(m).name for m in methods] if methods is not None else list(ARENA)
    for ratio, needs in RATIO_NEEDS.items():
        for need in needs:
            if need not in methods:
                raise ValueError(f"the ratio '{ratio}' needs the arena method {need!r}, which is not among the chosen "
                                 f"methods ({', '.join(methods)}); add it (known: {', '.join(ARENA)})")
    seed_everything(seed)
    t = vtab.load_task(task, n_test=200, seed=seed)
    clip = load_backbone(profile)
    test = _dataset(clip, t.x_test, t.y_test)
    trainval = _dataset(clip, t.x_trainval, t.y_trainval)
    raw, rows = {}, []

    def timed(name, fn):
        seed_everything(seed)
        r = time_per_step(fn, warmup=1, repeats=repeats, device=dev)
        raw[name] = r
        return r["s_per_step"]

    # test time
    batch = test.tensors[0][:50].to(dev)
    tta = {}
    for name, kw in (("source", {}), ("batclip", {"lr": 5e-3}), ("tpt", {})):
        bb = load_backbone(profile)
        tta[name] = build_method(name, bb.model, bb.tokenizer, t.classes, **kw)
    zs = timed("zero-shot s per batch", lambda: tta["source"](batch))
    bc = timed("BATCLIP s per batch", lambda: tta["batclip"](batch))
    tpt = timed("TPT s per image", lambda: tta["tpt"](batch[:1]))
    rows.append({"ratio": "BATCLIP s per batch / zero-shot s per batch", "value": bc / zs,
                 "detail": f"batch of {len(batch)}: {bc:.3f} s vs {zs:.3f} s"})
    rows.append({"ratio": "TPT s per image / BATCLIP s per image", "value": tpt / (bc / len(batch)),
                 "detail": f"{tpt:.3f} s vs {bc / len(batch):.4f} s"})
    # SPT: the sensitivity pass against an epoch
    vit = _vit(Context(load_backbone(profile), tuple(t.classes), trainval, cfg)).to(dev)
    sens = timed("SPT sensitivity pass s", lambda: spt_mod.sensitivity(vit, trainval, 32, 16))
    epoch = fit_classifier(spt_mod.full_finetune(vit), trainval, test, FitConfig(epochs=1, batch_size=64,
                           warmup_epochs=0, eval_every=1, eval_last=1, seed=seed))["s_per_epoch"]
    raw["one training epoch s (full fine-tuning)"] = {"s_per_step": epoch}
    rows.append({"ratio": "SPT sensitivity pass s / one training epoch s", "value": sens / epoch,
                 "detail": f"16 batches of 32: {sens:.2f} s; an epoch of {len(trainval)} images: {epoch:.2f} s"})
    # memory and parameters of every method
    mem, params = {}, {}
    for m in progress(methods, desc="arena methods", disable=not show_progress):
        seed_everything(seed)
        built = build(get_method(m), Context(load_backbone(profile), tuple(t.classes), trainval, cfg))
        built.model.to(dev)
        params[m] = count_parameters(built.model)
        if built.fit is not None:   # frozen embeddings: what its own training holds and trains
            r = built.fit(trainval, test, seed)
            params[m] = type(params[m])(r["trainable"], params[m].total + r["trainable"])
            mem[m] = r["train_mb"]
        else:
            mem[m] = step_memory_mb(built.model, trainval, cfg.fit.batch_size) if params[m].trainable else 0.0
        raw[f"{m}: training memory MiB"] = mem[m]
    for m in methods:
        ref = FULL[ARENA[m].backbone]
        if params[m].trainable and m != ref:
            rows.append({"ratio": f"training memory / {ref}: {m}", "value": mem[m] / mem[ref],
                         "detail": f"{mem[m]:.1f} MiB vs {mem[ref]:.1f} MiB"})
    for m in methods:
        rows.append({"ratio": f"trainable / total parameters: {m}", "value": params[m].fraction,
                     "detail": f"{params[m].trainable:,} of {params[m].total:,}"})
    return {"ratios": rows, "raw": raw, "profile": profile, "task": task, "repeats": repeats}


def main(argv=None) -> int:
    import argparse
    import json
    from pathlib import Path

    import pandas as pd

    from .profiles import activate
    p = argparse.ArgumentParser(prog="python -m clipadapt.arena", description="The arena's benchmark: efficiency "
                                "ratios measured in one run, printed and saved with the raw timings.")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="measure and print the ratios")
    b.add_argument("--profile", default="ci")
    b.add_argument("--methods", nargs="+", default=None, help=f"arena methods (default all: {', '.join(ARENA)})")
    b.add_argument("--task", default="digits")
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--out", default="results/arena-bench.json", help="where the raw timings and ratios are saved")
    a = p.parse_args(argv)
    activate(a.profile)
    try:
        res = benchmark(a.methods, a.profile, a.task, a.repeats)
    except ValueError as e:
        p.exit(2, f"error: {e}\n")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    with pd.option_context("display.max_colwidth", 80, "display.width", 200):
        print(pd.DataFrame(res["ratios"]).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"raw timings: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
