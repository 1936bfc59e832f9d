"""PE-CLIP's adapters (Saadi et al., arXiv 2503.16945; official code SAADI-Ibtissam/PE-CLIP, `models/clip1/model1.py`)
on open_clip's CLIP, for video: a clip of T frames goes through the image tower as T images.

In every transformer block of both towers, each adapter transforms a sub-layer's output before the block's residual
add, and has its own internal residual:
- **Shared Adapter (ShA)**, after self-attention in both towers: h + Linear(d/8 -> d)(GELU(Linear(d -> d/8)(h))),
  PyTorch's default initialisation (so it does not start as the identity). "Shared" names the design used in both
  towers; the official code gives each block its own weights.
- **Temporal Dynamic Adapter (TDA)**, after the MLP of the image tower: LayerNorm, a per-token scale
  s = ReLU(Linear(d -> 1)), Linear(d -> d/8), a GRU along the T frames, GELU, Linear(d/8 -> d) initialised to zero,
  times s, plus the residual. The text tower gets a plain adapter at that slot.

The GRU runs along the frames of each video separately, for every token position. The official code runs it over
the whole batch of frames in one sequence, so the state of one video's last frame flows into the next video's first
frame and a prediction depends on what else is in the batch; `TemporalAdapter(leak_across_videos=True)` reproduces
that behaviour for the chapter's comparison.
"""
from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from ..bench import count_parameters, training_memory
from ..checkpoints import JobStore, load_weights
from ..data.clips import AU_DESCRIPTIONS, EXPRESSIONS
from ..engine import TrainSpec
from ..eval import uar_war
from ..finetune import batches, fit_classifier, labels_of, predict
from ..models.prompts import MultiModalPrompts
from ..transforms import preprocess_batch
from ..utils import progress, seed_everything
from .base import ClassTexts, Method, option
from .registry import build_method, method_class, register

REDUCTION = 8


class Adapter(nn.Module):
    """Bottleneck adapter with an internal residual (ShA, and the text tower's adapter after the MLP)."""

    def __init__(self, d: int, reduction: int = REDUCTION):
        super().__init__()
        self.down, self.up = nn.Linear(d, d // reduction), nn.Linear(d // reduction, d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h)))


class TemporalAdapter(nn.Module):
    """TDA: LN -> s = ReLU(Linear(d->1)); Linear(d->d/r) -> GRU over frames -> GELU -> Linear(d/r->d) (zero init)
    -> times s -> plus the residual. Input: (videos * frames, tokens, d), frames of a video consecutive; set
    `frames` before the forward pass (`set_frames`)."""

    def __init__(self, d: int, reduction: int = REDUCTION, leak_across_videos: bool = False):
        super().__init__()
        r = d // reduction
        self.norm, self.scale = nn.LayerNorm(d), nn.Linear(d, 1)
        self.down, self.gru, self.up = nn.Linear(d, r), nn.GRU(r, r, batch_first=True), nn.Linear(r, d)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.frames: int | None = None
        self.leak_across_videos = leak_across_videos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frames is None:
            raise RuntimeError("TemporalAdapter needs the number of frames per video: call set_frames(model, T) first")
        bt, n_tok, d = x.shape
        if bt % self.frames:
            raise ValueError(f"{bt} frames in the batch is not a whole number of videos of {self.frames} frames")
        z = self.norm(x)
        s = F.relu(self.scale(z))
        h = self.down(z)
        if self.leak_across_videos:   # the official layout: one sequence over all frames of the batch, per token
            h, _ = self.gru(h.transpose(0, 1))
            h = h.transpose(0, 1)
        else:                         # per video and token: (videos * tokens, frames, r)
            v = bt // self.frames
            seq = h.reshape(v, self.frames, n_tok, -1).permute(0, 2, 1, 3).reshape(v * n_tok, self.frames, -1)
            out, _ = self.gru(seq)
            h = out.reshape(v, n_tok, self.frames, -1).permute(0, 2, 1, 3).reshape(bt, n_tok, -1)
        return x + self.up(F.gelu(h)) * s


def _blocks(tower: nn.Module):
    return tower.transformer.resblocks


def add_adapters(model: nn.Module, temporal: str = "tda", text: bool = True, reduction: int = REDUCTION,
                 leak_across_videos: bool = False, sha: bool = True) -> nn.Module:
    """Insert PE-CLIP's adapters into an open_clip CLIP in place and freeze everything else.

    temporal, the slot after the MLP: "tda" (the Temporal Dynamic Adapter in the image tower, a plain adapter in the
    text tower: PE-CLIP), "adapter" (plain adapters in both: the ablation without temporal modelling, where frames
    only meet in the final mean) or "none" (nothing after the MLP). sha: the Shared Adapter after self-attention.
    text: adapters in the text tower too.
    """
    if temporal not in ("tda", "adapter", "none"):
        raise ValueError(f"unknown temporal adapter {temporal!r}; use 'tda', 'adapter' or 'none'")
    model.requires_grad_(False)
    towers = [(model.visual, True)] + ([(model, False)] if text else [])
    for tower, is_vision in towers:
        for blk in _blocks(tower):
            d = blk.ln_1.normalized_shape[0]
            if sha:
                blk.ls_1 = nn.Sequential(blk.ls_1, Adapter(d, reduction))
            if is_vision and temporal == "tda":
                blk.ls_2 = nn.Sequential(blk.ls_2, TemporalAdapter(d, reduction, leak_across_videos))
            elif temporal != "none":
                blk.ls_2 = nn.Sequential(blk.ls_2, Adapter(d, reduction))
    return model


def set_frames(model: nn.Module, frames: int) -> None:
    """Tell every TemporalAdapter how many consecutive frames make one video."""
    for m in model.modules():
        if isinstance(m, TemporalAdapter):
            m.frames = frames


def adapter_groups(model: nn.Module) -> dict[str, int]:
    """Trainable parameters per group: image-tower ShA, TDA (or its plain replacement), text-tower adapters."""
    out = {"image ShA": 0, "image TDA / adapter": 0, "text adapters": 0}
    for name, mod in model.named_modules():
        if not isinstance(mod, (Adapter, TemporalAdapter)):
            continue
        n = sum(p.numel() for p in mod.parameters())
        if not name.startswith("visual."):
            out["text adapters"] += n
        elif ".ls_1." in name:
            out["image ShA"] += n
        else:
            out["image TDA / adapter"] += n
    return out


def encode_video(model: nn.Module, frames: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Video embeddings: (videos, T, 3, H, W) frames through the image tower as one batch, mean over T."""
    if frames.dim() != 5 or frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] != 3:
        raise ValueError(f"expected clips as videos x T x 3 x H x W with at least one video and one frame, got shape "
                         f"{tuple(frames.shape)} (one image as a clip: x.unsqueeze(1))")
    v, t = frames.shape[:2]
    set_frames(model, t)
    e = model.encode_image(frames.flatten(0, 1)).reshape(v, t, -1).mean(1)
    return F.normalize(e, dim=-1) if normalize else e


# ---- the whole model: adapters + multimodal prompts + class texts, cosine logits at temperature 0.01

TEMPERATURE = 0.01   # the chapter's logits = cos / 0.01, as the official FERPA model (CLIP's logit_scale is not used)
PROMPT_LR_RATIO = 3e-5 / 2e-4   # the official AdamW groups: the prompt learner at 0.15 times the adapters' rate


class PEClip(nn.Module):
    """PE-CLIP around an open_clip CLIP: frozen towers, adapters (see `add_adapters`), MaPLe prompts, and one text per
    class (FACS AU descriptions by default). forward(frames: videos x T x 3 x H x W, preprocessed) -> logits, the
    cosines divided by `temperature` (None: times the model's own frozen `logit_scale`)."""

    def __init__(self, clip: nn.Module, tokenizer, class_texts, temporal: str = "tda", text_adapters: bool = True,
                 adapters: bool = True, prompts: bool = True, n_ctx: int = 2, depth: int = 9, sha: bool = True,
                 temperature: float | None = TEMPERATURE):
        super().__init__()
        self.temperature = temperature
        self.clip = add_adapters(clip, temporal, text_adapters, sha=sha) if adapters else clip.requires_grad_(False)
        self.prompts = MultiModalPrompts(clip, n_ctx, depth) if prompts else None
        prefix = f"{self.prompts.placeholder} " if prompts else ""
        self.register_buffer("tokens", tokenizer([prefix + t for t in class_texts]), persistent=False)

    def param_groups(self, lr_adapters: float = 2e-4, lr_prompts: float = 3e-5, weight_decay: float = 1e-2) -> list[dict]:
        """AdamW groups as the official script: adapters 2e-4, prompt learner 3e-5, weight decay 1e-2."""
        groups = [{"params": [p for p in self.clip.parameters() if p.requires_grad], "lr": lr_adapters}]
        if self.prompts is not None:
            groups.append({"params": list(self.prompts.parameters()), "lr": lr_prompts})
        return [dict(g, weight_decay=weight_decay) for g in groups if g["params"]]

    def features(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The unnormalised video embeddings and the normalised class-text features the logits compare."""
        with self.prompts.applied(self.clip) if self.prompts is not None else nullcontext():
            video = encode_video(self.clip, frames, normalize=False)
            text = F.normalize(self.clip.encode_text(self.tokens), dim=-1)
        return video, text

    def scale(self) -> torch.Tensor | float:
        """What the cosines are multiplied by: 1 / temperature, or the model's own logit_scale (never trained)."""
        if self.temperature is not None:
            return 1.0 / self.temperature
        return self.clip.logit_scale.detach().exp()

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        video, text = self.features(frames)
        return self.scale() * F.normalize(video, dim=-1) @ text.T


# ---- PE-CLIP's methods in the registry (zero-shot, linear probe and full fine-tuning: `methods.baselines`)

@dataclass(frozen=True)
class PEClipConfig:
    n_ctx: int = option(2, "MaPLe prompt vectors per block", paper=2, minimum=1)
    depth: int = option(9, "blocks with prompts (at most the towers' depth)", paper=9, minimum=1)
    lr_prompts: float = option(3e-5, "learning rate of the prompt learner (the adapters take the loop's rate, "
                                     "2e-4 in the official script)", paper=3e-5)


class PEClipMethod(Method):
    """PE-CLIP: ShA after self-attention and TDA after the MLP in both towers, MaPLe prompts, AU class texts."""
    family, backbones, chapter, config_class = "peft", ("clip",), "PE-CLIP", PEClipConfig
    adapters, sha, temporal, prompts = True, True, "tda", True

    def _apply(self, backbone, kind, data):
        return PEClip(backbone.clip, backbone.tokenizer, backbone.texts, temporal=self.temporal, adapters=self.adapters,
                      prompts=self.prompts, n_ctx=self.cfg.n_ctx, depth=self.cfg.depth, sha=self.sha,
                      temperature=backbone.temperature)

    def param_groups(self, model, lr, weight_decay):
        """Adapters at `lr`, the prompt learner at its own rate (the official AdamW groups)."""
        return model.param_groups(lr, self.cfg.lr_prompts, weight_decay)


register("pe-clip", "PE-CLIP")(PEClipMethod)


@register("pe-clip-adapters", "PE-CLIP adapters")
class PEClipAdapters(PEClipMethod):
    """PE-CLIP's adapters without prompts: ShA + TDA (the ablation's "ShA + TDA")."""
    prompts = False


@register("pe-clip-sha", "ShA only")
class PEClipSharedOnly(PEClipMethod):
    """Only the Shared Adapters after self-attention (no temporal adapter, no prompts)."""
    temporal, prompts = "none", False


@register("pe-clip-mean-pool", "PE-CLIP, TDA replaced by mean pooling")
class PEClipMeanPool(PEClipMethod):
    """PE-CLIP with plain adapters in the TDA slot: frames meet only in the final mean (the ablation)."""
    temporal = "adapter"


@register("maple", "MaPLe prompts")
class MaPLe(PEClipMethod):
    """MaPLe's multimodal prompts alone (Khattak et al., CVPR 2023), as PE-CLIP uses them; the towers stay frozen."""
    family, adapters = "prompts", False


# ---- the chapter's ablation: what trains, every row measured the same way

NAME_TEMPLATE = "an expression of {}."   # the official `class_names_with_context_7` wording


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: a registered method and the class texts, "au" (FACS descriptions, PE-CLIP) or
    "names" ("an expression of happiness.")."""
    method: str = "pe-clip"
    texts: str = "au"


VARIANTS: dict[str, Variant] = {
    "zero-shot, class names": Variant("zero-shot", "names"),
    "zero-shot, AU texts": Variant("zero-shot"),
    "linear probe": Variant("linear-probe"),
    "prompts only (MaPLe)": Variant("maple"),
    "ShA only": Variant("pe-clip-sha"),
    "ShA + TDA": Variant("pe-clip-adapters"),
    "PE-CLIP": Variant("pe-clip"),
    "PE-CLIP, TDA replaced by mean pooling": Variant("pe-clip-mean-pool"),
    "full fine-tuning": Variant("full-finetune"),
}


def class_texts(kind: str, expressions) -> list[str]:
    """The text per class: FACS AU descriptions (PE-CLIP, DFEW order) or the class names in the official template."""
    if kind == "au":
        if tuple(expressions) != EXPRESSIONS:
            raise ValueError(f"AU descriptions exist for the 7 DFEW classes in DFEW order {EXPRESSIONS}; got {expressions}")
        return list(AU_DESCRIPTIONS)
    if kind == "names":
        return [NAME_TEMPLATE.format(e) for e in expressions]
    raise ValueError(f"unknown class texts {kind!r}; use 'au' or 'names'")


def build_variant(variant: str | Variant, clip: nn.Module, tokenizer, expressions, **options) -> tuple[Method, nn.Module]:
    """The method and model of one ablation row around a fresh CLIP; model(frames: videos x T x 3 x H x W) ->
    logits. `options`: PEClipConfig fields (n_ctx, depth, lr_prompts), used by the rows that have them."""
    if isinstance(variant, str):
        if variant not in VARIANTS:
            raise ValueError(f"unknown PE-CLIP variant {variant!r}; known: {', '.join(VARIANTS)}")
        variant = VARIANTS[variant]
    unknown = set(options) - {f.name for f in dataclasses.fields(PEClipConfig)}
    if unknown:
        raise ValueError(f"unknown PE-CLIP option(s) {', '.join(sorted(unknown))}; use n_ctx, depth, lr_prompts")
    fields = {f.name for f in dataclasses.fields(method_class(variant.method).config_class)}
    method = build_method(variant.method, **{k: v for k, v in options.items() if k in fields})
    return method, method.apply(ClassTexts(clip, tokenizer, class_texts(variant.texts, expressions), TEMPERATURE))


def video_dataset(frames: np.ndarray, labels, preprocess) -> TensorDataset:
    """In-memory clips (uint8 n x T x H x W x 3) preprocessed once: a list-indexed dataset of (n x T x 3 x S x S)."""
    n, t = frames.shape[:2]
    x = preprocess_batch(preprocess, frames.reshape(n * t, *frames.shape[2:]))
    return TensorDataset(x.reshape(n, t, *x.shape[1:]), torch.as_tensor(np.asarray(labels), dtype=torch.long))


@dataclass
class AblationConfig:
    """Learning rates per kind of training (paper: the official AdamW groups; full fine-tuning at DFER-CLIP's
    image-encoder rate) and the prompt shape. The schedule, epochs and batch size live in the TrainSpec."""
    lr_adapters: float = 2e-4
    lr_prompts: float = 3e-5
    lr_full: float = 1e-5
    lr_probe: float = 1e-3
    weight_decay: float = 1e-2
    n_ctx: int = 2
    depth: int = 9


def _groups(model: nn.Module, method: Method, cfg: AblationConfig) -> list[dict]:
    if method.family == "head":
        return [{"params": list(model.head.parameters()), "lr": cfg.lr_probe, "weight_decay": cfg.weight_decay}]
    if method.family == "full":
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr_full,
                 "weight_decay": cfg.weight_decay}]
    return method.param_groups(model, cfg.lr_adapters, cfg.weight_decay)   # prompts at the method's lr_prompts


def uar_war_score(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    uar, war = uar_war(pred, labels, len(EXPRESSIONS))
    return {"uar": uar, "war": war}


def ablation(load_clip, data: dict, variants: dict[str, Variant] | None = None, seeds=(0,), fit_cfg=None,
             cfg: AblationConfig | None = None, expressions=None, show_progress: bool = True, keep=(),
             store=None, key=()):
    """Train and test every variant from a fresh CLIP per seed. `load_clip()` returns a `LoadedCLIP`; `data` has
    list-indexed "train", "val" and "test" video datasets. The model is selected on validation UAR (the official
    script selects on the test split). Rows: variant, seed, UAR and WAR (%) of the selected epoch, trainable
    parameters, training memory of one step (MiB: weights, gradients + Adam state, saved activations), seconds per
    step, and the test predictions (for the confusion matrix); for the variants named in `keep`, the trained model of
    the first seed (column "model"). `store` (a `clipadapt.checkpoints.JobStore`) keeps each (*key, variant, seed)
    job's row and trained weights: a stopped run resumes there."""
    import time

    import pandas as pd

    variants = variants or VARIANTS
    cfg, fit_cfg = cfg or AblationConfig(), fit_cfg or TrainSpec()
    expressions = tuple(expressions or EXPRESSIONS)
    y_test = labels_of(data["test"]).numpy()
    rows, store, trained = [], store if store is not None else JobStore(None), {}
    jobs = [(label, seed) for label in variants for seed in seeds]

    def build(label, seed):
        seed_everything(seed)
        bb = load_clip()
        return build_variant(variants[label], bb.model, bb.tokenizer, expressions, n_ctx=cfg.n_ctx, depth=cfg.depth,
                             lr_prompts=cfg.lr_prompts)

    def job(label, seed):
        method, model = build(label, seed)
        trained["model"] = model
        row = {"variant": label, "seed": seed, "trainable": count_parameters(model).trainable}
        x0, y0 = next(iter(batches(data["train"], fit_cfg.batch_size)))
        if method.family == "zero-shot":
            t0 = time.perf_counter()
            pred = predict(model, data["test"], batch_size=fit_cfg.batch_size)
            row.update(uar_war_score(pred, y_test), epoch=0, s_per_step=float("nan"),
                       memory_mb=float("nan"), eval_s=time.perf_counter() - t0)
        else:
            mem = training_memory(model, lambda: F.cross_entropy(model(x0), y0))
            groups = _groups(model, method, cfg)
            r = fit_classifier(model, data["train"], data["test"], dataclasses.replace(fit_cfg, seed=seed),
                               val=data["val"], param_groups=groups, score=uar_war_score)
            pred = predict(model, data["test"], batch_size=fit_cfg.batch_size)   # the selected epoch's weights
            row.update(r["selected"], s_per_step=r["s_per_step"], memory_mb=mem["total_mb"], history=r["history"])
        row["pred"] = pred
        return row, (model if method.family != "zero-shot" else None), {}

    for label, seed in progress(jobs, desc="PE-CLIP ablation", disable=not show_progress):
        trained.clear()
        done, stored = store.run((*key, label, seed), lambda: job(label, seed))
        row = dict(done["row"])
        if label in keep and seed == seeds[0]:
            row["model"] = (load_weights(build(label, seed)[1], done["weights"]) if stored else trained["model"]).eval()
        rows.append(row)
    return pd.DataFrame(rows)
