"""Test-time adaptation (TTA) over a small base class, after mariodoebler/test-time-adaptation's `TTAMethod`.

A TTA method wraps a CLIP model and a class list. Each call on an unlabelled batch *predicts, then adapts*: it
returns the logits of the forward pass before its update, as online TTA is scored. The hooks are
`configure_model` (what is trainable), `collect_params`, `loss`, `step` and `reset`. Episodic methods reset before
every batch; continual ones (the default here, as in BATCLIP) keep adapting until the caller calls `reset()`, e.g.
at the start of each corruption.

Also here: zero-shot CLIP (the no-adaptation reference) and Tent (Wang et al., ICLR 2021, "Tent: Fully Test-time
Adaptation by Entropy Minimization"), in its CLIP form: entropy minimisation over the vision encoder's LayerNorms
with fixed text features.
"""
from __future__ import annotations

import copy
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..engine import PRECISIONS, distributed
from ..eval import accuracy, check_classnames, check_labels
from ..transforms import preprocess_batch
from ..utils import progress, seed_everything
from .base import option
from .registry import build_method, known_methods, register


@dataclass
class TTAConfig:
    template: str = option("a photo of a {}.", "one prompt per class, as BATCLIP uses")
    optimizer: str = option("adamw", "adamw or adam")
    lr: float = option(1e-3, "learning rate of the adapted parameters")
    weight_decay: float = option(0.01, "weight decay of the optimiser")
    steps: int = option(1, "gradient steps per test batch")
    episodic: bool = option(False, "True: reset before every batch; False: continual until reset()")
    precision: str = option("fp32", "fp32, or bf16 (autocast of the forward pass)")


def per_image_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The Shannon entropy of each row's softmax (nats): 0 for a certain prediction, log(classes) for a uniform one."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy of the softmax predictions (nats)."""
    return per_image_entropy(logits).mean()


def layer_norms(module: nn.Module) -> list[nn.LayerNorm]:
    return [m for m in module.modules() if isinstance(m, nn.LayerNorm)]


def encode_prompts(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(tokens)`, computed over the positions up to the longest prompt's end token only.

    open_clip's CLIP reads each prompt's feature at its end-of-text token (argmax pooling) under a causal mask, so no
    later position can change it, and a class prompt of a few words fills 10 to 20 of the 77 positions: the text
    tower's work, forward and backward, shrinks in proportion. Any other text model or pooling gets `encode_text` as
    it is. The features equal `encode_text`'s to float rounding (a test)."""
    import open_clip

    if type(model) is not open_clip.CLIP or model.text_pool_type != "argmax" or model.attn_mask is None:
        return model.encode_text(tokens)
    n = int(tokens.argmax(dim=-1).max()) + 1
    if n >= tokens.shape[1]:
        return model.encode_text(tokens)
    tokens = tokens[:, :n]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:n].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    x = x[torch.arange(len(x), device=x.device), tokens.argmax(dim=-1)]
    if isinstance(model.text_projection, nn.Linear):
        return model.text_projection(x)
    return x if model.text_projection is None else x @ model.text_projection


class TTAMethod(nn.Module):
    """Base of the test-time methods: wrap a CLIP and a class list; each call on a batch predicts, then adapts."""
    config_class = TTAConfig
    kind, family, backbones, chapter = "test-time", "test-time", ("clip",), "BATCLIP"
    adapt_text = False  # does the text encoder change (so text features are recomputed every batch)?
    min_batch = 2       # images a batch needs to adapt on (the losses compare predictions within a batch)

    def __init__(self, model: nn.Module, tokenizer, classnames, cfg: TTAConfig | None = None):
        super().__init__()
        self.cfg = cfg or self.config_class()
        if self.cfg.precision not in PRECISIONS or self.cfg.precision == "fp16":   # the engine's vocabulary
            raise ValueError(f"precision must be 'fp32' or 'bf16' (fp16 would need a loss scaler), "
                             f"got {self.cfg.precision!r}")
        if self.cfg.steps < 1:
            raise ValueError(f"steps must be at least 1 (gradient steps per test batch), got {self.cfg.steps}")
        if not self.cfg.lr > 0:
            raise ValueError(f"lr must be positive, got {self.cfg.lr}")
        self.model = model
        self.tokenizer = tokenizer
        self.classnames = check_classnames(classnames)
        self.skipped_updates = 0   # batches whose loss was not finite: predicted, not adapted on
        self.register_buffer("tokens", tokenizer([self.cfg.template.format(c) for c in self.classnames]),
                             persistent=False)
        self.configure_model()
        self.params = self.collect_params()
        self.optimizer = self.make_optimizer() if self.params else None
        self._fixed_text = None if self.adapt_text else self._text_features().detach()
        self._param_state = [p.detach().clone() for p in self.params]  # only these change (the rest is frozen)
        self._opt_state = copy.deepcopy(self.optimizer.state_dict()) if self.optimizer else None

    # ---- hooks
    def configure_model(self) -> None:
        """Freeze everything; subclasses switch on what they adapt."""
        self.model.eval()
        self.model.requires_grad_(False)

    def collect_params(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def make_optimizer(self) -> torch.optim.Optimizer:
        opt = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}.get(self.cfg.optimizer)
        if opt is None:
            raise ValueError(f"unknown optimizer {self.cfg.optimizer!r}: use 'adamw' or 'adam'")
        return opt(self.params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def loss(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    # ---- the shared loop
    def autocast(self, device: torch.device):
        """bf16 autocast of the forward pass when `precision == "bf16"`, else nothing."""
        return torch.autocast(device.type, dtype=torch.bfloat16) if self.cfg.precision == "bf16" else nullcontext()

    def _text_features(self) -> torch.Tensor:
        return F.normalize(encode_prompts(self.model, self.tokens), dim=-1)

    def check_input(self, images: torch.Tensor) -> None:
        """Images as the model takes them: float n x 3 x size x size, from the backbone's preprocess."""
        size = self.model.visual.image_size
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        if (not torch.is_tensor(images) or not images.is_floating_point() or images.dim() != 4
                or images.shape[1] != 3 or tuple(images.shape[2:]) != size):
            got = (f"{images.dtype} {tuple(images.shape)}" if torch.is_tensor(images) else type(images).__name__)
            raise ValueError(f"{type(self).__name__} takes preprocessed float images n x 3 x {size[0]} x {size[1]}, got "
                             f"{got}; pass uint8 n x h x w x 3 images through "
                             "clipadapt.transforms.preprocess_batch(backbone.preprocess, images), or use run_stream")

    def outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits and the features the losses need: unnormalised image embeddings and normalised text ones."""
        self.check_input(images)
        with self.autocast(images.device):
            img = self.model.encode_image(images)
            txt = self._text_features() if self._fixed_text is None else self._fixed_text
            img, txt = img.float(), txt.float()
            logits = self.model.logit_scale.exp() * F.normalize(img, dim=-1) @ txt.T
        return {"logits": logits, "image_pre": img, "text": txt}

    def step(self, images: torch.Tensor) -> torch.Tensor:
        out = self.outputs(images)
        if self.optimizer is not None:
            self.update(self.loss(out))
        return out["logits"].detach()

    def update(self, loss: torch.Tensor) -> bool:
        """One optimiser step on `loss`; a loss that is not finite (a NaN or infinite image in the batch) is skipped
        and counted in `skipped_updates`, so one broken image cannot poison every later batch."""
        if not torch.isfinite(loss):
            self.skipped_updates += 1
            return False
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return True

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits with the current weights, without adapting (a stream's last batch when it is too small)."""
        return self.outputs(images)["logits"]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Predict, then adapt: the logits returned are those of the first forward pass, before any update."""
        if images.shape[0] < self.min_batch:
            raise ValueError(f"{type(self).__name__} adapts on batches of unlabelled images and needs at least "
                             f"{self.min_batch} per batch (its losses compare predictions within a batch); use "
                             f"batch_size >= {self.min_batch}, or predict() for fewer images")
        if self.cfg.episodic:
            self.reset()
        ctx = torch.enable_grad() if self.optimizer is not None else torch.no_grad()
        with ctx:
            logits = self.step(images)
            for _ in range(self.cfg.steps - 1):
                self.step(images)
        return logits

    def reset(self) -> None:
        """Restore the trainable weights and the optimizer state of construction time, exactly."""
        with torch.no_grad():
            for p, saved in zip(self.params, self._param_state):
                p.copy_(saved)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(self._opt_state)

    def run_stream(self, images, labels, batch_size: int, preprocess, show_progress: bool = False) -> dict:
        """Adapt online over one stream of uint8 images in order; accuracy (%) of the predict-then-adapt logits.

        A last batch smaller than the method needs is predicted without adapting. Returns accuracy, the predictions,
        `skipped_updates` (batches whose loss was not finite) and `unadapted` (images only predicted)."""
        if len(images) == 0:
            raise ValueError("the stream is empty: give at least one image")
        if len(labels) != len(images):
            raise ValueError(f"the stream has {len(images)} images but {len(labels)} labels: give one label per image")
        if batch_size < self.min_batch:
            raise ValueError(f"batch_size must be at least {self.min_batch} for {type(self).__name__}, got {batch_size}")
        check_labels(labels, self.classnames)
        preds, skipped, unadapted = [], self.skipped_updates, 0
        device = next(self.model.parameters()).device
        for i in progress(range(0, len(images), batch_size), desc=type(self).__name__, disable=not show_progress):
            x = preprocess_batch(preprocess, images[i:i + batch_size]).to(device)
            if len(x) < self.min_batch:
                logits, unadapted = self.predict(x), len(x)
            else:
                logits = self(x)
            preds.append(logits.argmax(1).cpu().numpy())
        pred = np.concatenate(preds)
        return {"accuracy": accuracy(pred, labels), "pred": pred, "skipped_updates": self.skipped_updates - skipped,
                "unadapted": unadapted}


@register("source", "no adaptation")
class Source(TTAMethod):
    """The source model as it is (zero-shot CLIP on the stream): the reference every test-time method is compared
    with."""

    min_batch = 1       # nothing adapts: any batch, even one image

    def loss(self, out):  # never called: nothing is trainable
        raise RuntimeError("the source model has no loss")


@register("tent", "Tent")
class Tent(TTAMethod):
    """Tent for CLIP: minimise prediction entropy over the LayerNorms of the vision encoder (text fixed)."""

    def configure_model(self) -> None:
        super().configure_model()
        for ln in layer_norms(self.model.visual):
            ln.requires_grad_(True)

    def loss(self, out):
        return entropy(out["logits"])


def corruption_benchmark(load_backbone_fn, source, methods: dict[str, dict], corruptions, severities=(5,),
                         batch_size: int = 50, seed: int = 0, show_progress: bool = True):
    """Run each method online over each corruption stream of `source`, from a fresh backbone every stream.

    `source` is a `clipadapt.data.streams` source. `methods` maps a row label to `{"method": registry name,
    "n": first n images only (optional, e.g. for slow TPT), **config overrides}`. Returns a tidy DataFrame: method,
    corruption, severity, seed, accuracy (%), seconds (wall time of the stream), images.

    Under a distributed launcher (`accelerate launch --num_processes N`, one process per GPU) the streams are dealt
    out to the processes: each stream still runs whole, in order, from a fresh model on one device (adaptation stays
    online per stream, as the papers define it), and every process returns the same table as a single process would.
    """
    import time

    import pandas as pd
    from accelerate import PartialState
    from accelerate.utils import gather_object

    for label, spec in methods.items():
        if not isinstance(spec, dict) or "method" not in spec:
            raise ValueError(f"methods[{label!r}] must be a dict with a 'method' key (a registered name: "
                             f"{', '.join(known_methods('test-time'))}), e.g. {{'method': 'tent'}}; got {spec!r}")
    state = PartialState(cpu=not torch.cuda.is_available()) if distributed() else None   # gloo on a CPU launch
    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    jobs = [(c, s) for s in severities for c in corruptions]
    mine = list(enumerate(jobs))[rank::world]
    rows = []
    for k, (c, s) in progress(mine, desc=f"{source.name} streams", disable=not show_progress or rank > 0):
        x, y = source.stream(c, s, seed)
        for j, (label, spec) in enumerate(methods.items()):
            spec = dict(spec)
            n = spec.pop("n", None) or len(y)
            seed_everything(seed)
            bb = load_backbone_fn()
            if state is not None:   # this process's GPU (or the CPU of a CPU launch)
                bb.model.to(state.device)
            m = build_method(spec.pop("method"), bb.model, bb.tokenizer, source.classes, **spec)
            t0 = time.perf_counter()
            r = m.run_stream(x[:n], y[:n], batch_size, bb.preprocess)
            if r["skipped_updates"]:
                warnings.warn(f"{label} on {c} (severity {s}): {r['skipped_updates']} batches had a loss that is not "
                              "finite and were predicted without adapting; check the stream's images", stacklevel=2)
            rows.append({"method": label, "corruption": c, "severity": s, "seed": seed, "accuracy": r["accuracy"],
                         "seconds": time.perf_counter() - t0, "images": n, "_order": (k, j)})
    if state is not None:
        rows = gather_object(rows)
    rows.sort(key=lambda r: r["_order"])   # the order of a single process
    return pd.DataFrame(rows).drop(columns="_order")
