"""The arena's contestants and runner: the table of methods (`ARENA`), how each row is built through the method
registry on its backbone, face clips as inputs, and `run` (every method x task x seed, one measurement)."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..bench import count_parameters, training_memory
from ..checkpoints import JobStore, load_weights
from ..data.vtab import CLASSNAMES_KEY, has_class_names
from ..engine import TrainSpec, checkpointed_blocks
from ..finetune import ImageSet, batches, fit_classifier, labels_of, predict
from ..methods import build_method, method_class
from ..methods import contrastive_da as da
from ..methods.base import ClassTexts, Method
from ..methods.peclip import PROMPT_LR_RATIO, video_dataset
from ..models.loader import load_backbone
from ..models.vit import clip_image_tower
from ..profiles import get_profile
from ..transforms import preprocess_batch
from ..utils import progress, seed_everything

TEMPLATE = "a photo of a {}."


@dataclass(frozen=True)
class ArenaConfig:
    """What every method shares: the few-shot sample and the training schedule; each method's own sizes."""
    shots: int = 16                 # labelled images per class (few-shot; the whole train800 if there are fewer)
    fit: TrainSpec = dataclasses.field(default_factory=lambda: TrainSpec(
        epochs=20, lr=3e-3, warmup=0.1, batch_size=32, eval_every=20, eval_last=1))
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
    texts: tuple[str, ...] | None = None   # each class's text for the text classifiers (default TEMPLATE of its name)


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
    return clip_image_tower(ctx.clip.model.visual, len(ctx.classes))


def _options(row: ArenaMethod, ctx: Context) -> dict:
    """The arena's shared sizes, for the config fields the method has. The shared rate goes to what a method mainly
    trains; PE-CLIP's prompt learner, when it trains beside the adapters, keeps the official ratio to their rate
    (`PROMPT_LR_RATIO`), while MaPLe's prompts alone take the shared rate (MaPLe's own 0.0035 is close to it)."""
    cfg = ctx.cfg
    cls = method_class(row.method)
    blocks = len(ctx.clip.model.visual.transformer.resblocks)
    shared = {"rank": cfg.rank, "budget": cfg.budget, "n_ctx": cfg.n_ctx, "depth": min(cfg.prompt_depth or 9, blocks),
              "sensitivity_batches": 4, "sensitivity_batch_size": 16,   # SPT: a quick ranking on 4 batches of 16
              "lr_prompts": cfg.fit.lr * (PROMPT_LR_RATIO if getattr(cls, "adapters", False) else 1.0)}
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
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
    texts = list(ctx.texts or [TEMPLATE.format(c) for c in ctx.classes])
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


def own_groups(built: Built, fit: TrainSpec) -> list[dict] | None:
    """The optimiser groups of a method that sets its own (PE-CLIP: adapters and prompts at their rates), else None
    (the training loop's groups: every trainable weight at `fit.lr`)."""
    m = built.method
    if m is None or type(m).param_groups is Method.param_groups:
        return None
    model = built.model.inner if isinstance(built.model, ImagesAsClips) else built.model
    return m.param_groups(model, fit.lr, fit.weight_decay)


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
    if shots < 1:
        raise ValueError(f"shots must be at least 1 labelled example per class, got {shots}")
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.nonzero(labels == c)[0])[:shots] for c in np.unique(labels)]))


def step_memory_mb(model: nn.Module, data, batch_size: int, checkpointing: bool = False) -> float:
    """The memory one training step holds at `batch_size` (weights, gradients and Adam, saved activations); with
    `checkpointing`, what it holds when the transformer blocks are recomputed (`bench.training_memory`)."""
    dev = next(model.parameters()).device
    x, y = (t.to(dev) for t in next(iter(batches(data, batch_size))))
    blocks = checkpointed_blocks(model) if checkpointing else []
    mem = training_memory(model, lambda: nn.functional.cross_entropy(model(x), y), blocks)
    return mem["checkpointed_total_mb"] if blocks else mem["total_mb"]


def run(methods, tasks, seeds=(0, 1, 2), cfg: ArenaConfig | None = None, profile: str = "ci",
        show_progress: bool = True, store=None, key=(), load: Callable | None = None):
    """Adapt every method to every task from a fresh backbone per seed; a tidy DataFrame, one row per run.

    `tasks`: `clipadapt.data.vtab.Task`s. Columns: method, family, chapter, task, group, seed, metric ("accuracy"),
    value (%), trainable, total, stored (parameters), train_mb (memory of one training step), s_per_step,
    adapt_s (preparation + training seconds), shots. `store` (a `clipadapt.checkpoints.JobStore`) keeps each
    (*key, task, method, seed) job's row and trained weights: a stopped run resumes there. `load()` gives a fresh
    backbone (a `LoadedCLIP`); default the profile's.
    """
    import pandas as pd
    return pd.DataFrame([row for *_, row in _runs(methods, tasks, seeds, cfg or ArenaConfig(), profile, show_progress,
                                                  store=store, key=key, load=load)])


def _runs(methods, tasks, seeds, cfg: ArenaConfig, profile: str, show_progress: bool, desc: str = "arena runs",
          store=None, key=(), load: Callable | None = None):
    """Yield (task, method, seed, built, row) for every task, seed and method: the adapted model and its table row
    (read back from `store` with its trained weights when the job is stored)."""
    device = get_profile(profile).device
    load_backbone_ = load or (lambda: load_backbone(profile))
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
            clip = load_backbone_()
            idx = few_shot(task.y_train, cfg.shots, seed)
            data = {"key": (task.name, seed), "test": _dataset(clip, task.x_test, task.y_test),
                    "train": _dataset(clip, task.x_train[idx], task.y_train[idx])}
        seed_everything(seed)
        ctx = Context(load_backbone_(), tuple(task.classes), data["train"], cfg, getattr(task, "texts", None))
        t0 = time.perf_counter()
        built = build(method, ctx)
        built.model.to(device)

        def job(task=task, method=method, seed=seed, built=built):
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
                r = fit_classifier(built.model, data["train"], data["test"], fit, param_groups=own_groups(built, fit))
                value, s_step = r["last"], r["s_per_step"]
            else:
                train_mb, s_step = float("nan"), float("nan")
                value = 100 * float(np.mean(predict(built.model, data["test"]) == task.y_test))
            return {"method": method.name, "family": method.family, "chapter": method.chapter, "task": task.name,
                    "group": task.group, "seed": seed, "metric": "accuracy", "value": value,
                    "trainable": counts.trainable, "total": counts.total, "stored": stored, "train_mb": train_mb,
                    "s_per_step": s_step, "adapt_s": time.perf_counter() - t0, "shots": cfg.shots}, \
                (built.model if built.fit is None and counts.trainable else None), {}

        store = store if store is not None else JobStore(None)
        done, read_back = store.run((*key, task.name, method.name, seed), job)
        if read_back:
            load_weights(built.model, done["weights"])
        yield task, method, seed, built, dict(done["row"])


def _named_vtab1k() -> list[str]:
    return ["cifar", *CLASSNAMES_KEY]


def _dataset(clip, images, labels):
    """Images in memory (a small uint8 array) preprocessed once; anything larger or read lazily from files (paper:
    VTAB-1k test splits of up to 26k images at 224 px) transformed per batch."""
    from torch.utils.data import TensorDataset

    if isinstance(images, np.ndarray) and images.ndim == 5:   # clips: n x T x H x W x 3, every frame preprocessed
        return video_dataset(images, labels, clip.preprocess)
    if isinstance(images, np.ndarray) and len(images) <= 5000:
        return TensorDataset(preprocess_batch(clip.preprocess, images), torch.as_tensor(labels, dtype=torch.long))
    return ImageSet(images, labels, clip.preprocess)


def pick(board, among=None) -> tuple[str, list[str]]:
    """The arena's pick for few labels from a board indexed by method (columns mean, std, train_mb): among the
    methods (`among`, default all) within one seed-standard-deviation of the most accurate, the one whose training
    step needs the least memory (one seed: no deviation, the most accurate). Returns (pick, the methods in reach)."""
    best = board["mean"].idxmax()
    std = board.loc[best, "std"]
    rows = board if among is None else board.loc[list(among)]
    near = rows[rows["mean"] >= board.loc[best, "mean"] - (0.0 if std != std else std)]
    if near.empty:
        raise ValueError(f"no method within reach of the most accurate ({best}); nothing to pick")
    return near["train_mb"].idxmin(), list(near.index)


def summary(df):
    """Mean and standard deviation over seeds per method and task group, with the method's costs."""
    g = df.groupby(["method", "family", "group"])
    out = g["value"].agg(["mean", "std"]).join(g[["trainable", "stored", "train_mb", "s_per_step"]].mean())
    return out.reset_index()
