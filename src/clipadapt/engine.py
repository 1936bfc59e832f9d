"""One training loop for everything the project trains with labels or pairs: the tiny CLIP's and the tiny VL-BART's
pretraining, fine-tuning of every PEFT method (`clipadapt.finetune.fit_classifier`), VL-PET's multi-task training
(`clipadapt.vltrain.train_vl`) and the contrastive head (`clipadapt.methods.contrastive_da.train_head`).

A caller gives the model, a `TrainSpec` (optimiser, schedule, warm-up, precision, accumulation, clipping, seed), the
batches of an epoch (`data(generator, shard)`: a sized iterable, drawn with the run's seeded generator) and a loss
(`loss(model, batch)`: a tensor, or a tensor and a dict of parts to record). Callbacks see every step and every epoch
(evaluation, model selection, a clamp after the step). Everything else is the same for all: AdamW or Adam over the
trainable parameters with a weight-decay policy, a schedule by name (timm's cosine, transformers' linear, or
constant), warm-up as a share of the schedule, and Hugging Face `accelerate` for precision, accumulation, clipping and
DDP under a distributed launcher (each process takes its share of every batch, so the effective batch and the number
of steps stay those of one process).
"""
from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from .utils import progress, seed_everything

# one precision vocabulary for training and for the test-time methods; the values are accelerate's names
PRECISIONS = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}
SCHEDULES = ("cosine", "linear", "constant")
OPTIMIZERS = ("adamw", "adam")


def _layer_norm_params(model: nn.Module) -> set[int]:
    """Parameters of LayerNorm-like modules (torch's, T5's T5LayerNorm, RMS norms)."""
    return {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) or "LayerNorm" in type(m).__name__
            or "RMSNorm" in type(m).__name__ for p in m.parameters(recurse=False)}


# which trainable parameters train without weight decay
NO_DECAY: dict[str, Callable[[nn.Module], Callable[[str, nn.Parameter], bool]]] = {
    # SPT's build_optimizer: position embedding and class token
    "spt": lambda model: lambda n, p: "pos_embed" in n or "cls_token" in n,
    # the VL-PET / VL-T5 scripts: biases and LayerNorms
    "bias-norm": lambda model: (lambda ln: lambda n, p: n.endswith("bias") or id(p) in ln)(_layer_norm_params(model)),
    # open_clip's training: gains, biases, the logit scale and embeddings
    "vectors-embeddings": lambda model: lambda n, p: p.ndim < 2 or "embedding" in n,
    "none": lambda model: lambda n, p: False,
}


@dataclass
class TrainSpec:
    """How a model trains. Defaults: SPT's VTAB-1k set-up (AdamW lr 1e-3, wd 1e-4, batch 64, 100 epochs, cosine from
    timm per epoch with 10 warm-up epochs from 1e-6 and a floor of 1e-5; test accuracy every 10 epochs and at each of
    the last 10, as the official scripts evaluate)."""
    epochs: int = 100
    steps: int | None = None          # a fixed number of optimiser steps instead of epochs (one drawn batch each)
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    no_decay: str = "spt"             # a NO_DECAY policy
    optimizer: str = "adamw"          # adamw or adam
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "cosine"          # cosine (timm), linear (transformers), constant
    tick: str = "epoch"               # the schedule moves once per epoch (timm's VTAB runs) or per optimiser step
    warmup: float = 0.1               # share of the schedule spent warming up (the one warm-up unit)
    warmup_lr: float = 1e-6           # cosine: the rate warm-up starts from
    min_lr: float = 1e-5              # cosine: the floor
    schedule_ticks: int | None = None   # length of the schedule in ticks (timm's t_initial); None: the training's
    clip_grad: float | None = None    # max gradient norm, at each optimiser step
    grad_accum: int = 1               # batches whose gradients add up before one optimiser step
    precision: str = "fp32"           # fp32, fp16 or bf16 (autocast on a GPU)
    seed: int = 0
    eval_every: int = 10              # evaluation callbacks: every n-th epoch ...
    eval_last: int = 10               # ... and each of the last n
    mixup: float = 0.0                # classification: probability of timm's Mixup per batch (alpha 0.4); 0: off
    num_workers: int = 0              # DataLoader workers (paper: reading and resizing image files)
    checkpointing: bool = False       # recompute each transformer block in the backward pass: memory for time

    def __post_init__(self):
        checks = [(self.optimizer in OPTIMIZERS, f"optimizer {self.optimizer!r}: use one of {OPTIMIZERS}"),
                  (self.schedule in SCHEDULES, f"schedule {self.schedule!r}: use one of {SCHEDULES}"),
                  (self.tick in ("epoch", "step"), f"tick {self.tick!r}: use 'epoch' or 'step'"),
                  (self.no_decay in NO_DECAY, f"no_decay {self.no_decay!r}: use one of {tuple(NO_DECAY)}"),
                  (self.precision in PRECISIONS, f"precision {self.precision!r}: use one of {tuple(PRECISIONS)}"),
                  (0 <= self.warmup <= 1, f"warmup {self.warmup!r} is a share of the schedule: 0 <= warmup <= 1"),
                  (self.epochs >= 1 or self.steps, f"epochs {self.epochs!r}: train at least one epoch"),
                  (self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be at least 1"),
                  (self.steps is None or self.steps >= 1, f"steps {self.steps!r}: at least 1, or None for epochs"),
                  (self.lr > 0, f"lr {self.lr!r} must be above 0"),
                  (self.min_lr >= 0 and self.warmup_lr >= 0,
                   f"min_lr {self.min_lr!r} and warmup_lr {self.warmup_lr!r} must be 0 or more"),
                  (self.eval_every >= 1 and self.eval_last >= 0,
                   f"eval_every {self.eval_every!r} must be at least 1 and eval_last {self.eval_last!r} 0 or more"),
                  (0 <= self.mixup <= 1, f"mixup {self.mixup!r} is a probability: 0 <= mixup <= 1"),
                  (self.clip_grad is None or self.clip_grad > 0, f"clip_grad {self.clip_grad!r} must be above 0"),
                  (not (self.schedule == "linear" and self.tick == "epoch"), "the linear schedule ticks per step")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"TrainSpec: {msg}")

    def evaluates(self, epoch: int) -> bool:
        """Whether the evaluation callbacks measure after `epoch` (0-based)."""
        return (epoch + 1) % self.eval_every == 0 or epoch >= self.epochs - max(self.eval_last, 1)

    def replace(self, **changes) -> "TrainSpec":
        return TrainSpec(**(asdict(self) | changes))


@contextmanager
def block_checkpointing(model: nn.Module):
    """Recompute every transformer block's activations in the backward pass instead of keeping them, through each
    library's own switch, all non-reentrant `torch.utils.checkpoint`: open_clip's `set_grad_checkpointing`, timm's
    `set_grad_checkpointing` and transformers' `activation_checkpointing_enable`. The modules a method added inside the
    blocks (adapters, LoRA, sparse deltas, prompt hooks) are recomputed with them, dropout with the same random draws,
    so outputs and gradients are those of the run without it. The switches are turned off again on exit."""
    undo = []
    for m in model.modules():
        if getattr(m, "supports_gradient_checkpointing", False) and hasattr(m, "activation_checkpointing_enable"):
            m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            undo.append(m.activation_checkpointing_disable)
        elif callable(getattr(m, "set_grad_checkpointing", None)):
            m.set_grad_checkpointing(True)
            undo.append(lambda m=m: m.set_grad_checkpointing(False))
    if not undo:
        raise ValueError(f"checkpointing: {type(model).__name__} has no transformer blocks that open_clip, timm or "
                         "transformers can checkpoint; train it with TrainSpec(checkpointing=False)")
    try:
        yield model
    finally:
        for off in undo:
            off()


def checkpointed_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules `block_checkpointing` recomputes, one checkpoint each: the blocks of timm's ViT, the residual
    blocks of open_clip's transformers and transformers' encoder and decoder layers (empty when there are none)."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:   # an older transformers: its layers are found by the switch below or not at all
        GradientCheckpointingLayer = ()
    found: dict[int, nn.Module] = {}
    for m in model.modules():
        if GradientCheckpointingLayer and isinstance(m, GradientCheckpointingLayer):
            found[id(m)] = m
        elif hasattr(m, "grad_checkpointing"):   # timm's ViT and open_clip's Transformer hold the flag
            seq = getattr(m, "blocks", None) or getattr(m, "resblocks", None)
            found |= {id(b): b for b in (seq if isinstance(seq, (nn.Sequential, nn.ModuleList)) else ())}
    return list(found.values())


def warmup_ticks(share: float, length: float) -> int:
    """Ticks of warm-up: `share` of `length`, whole ticks (a product within 1e-6 of a whole number counts as it)."""
    w = share * length
    return int(round(w)) if abs(w - round(w)) < 1e-6 else int(math.floor(w))


def distributed() -> bool:
    """Whether this process was started by a distributed launcher (`accelerate launch`, `torchrun`) with others."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def accelerator(device: torch.device | str, precision: str = "fp32", grad_accum: int = 1):
    """accelerate's Accelerator for a model on `device`: the launcher's process and device under a distributed
    launcher (`accelerate launch`, `torchrun`), else this process on `device` (the CPU stays the CPU).

    accelerate keeps one state per process and refuses a second Accelerator with another device or precision; a
    plain process (a notebook kernel) starts a fresh state on every call, so loops with different settings can run
    one after the other."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DistributedDataParallelKwargs
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use one of {tuple(PRECISIONS)}")
    if not distributed():
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return Accelerator(cpu=torch.device(device).type == "cpu", mixed_precision=PRECISIONS[precision],
                       gradient_accumulation_steps=grad_accum,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def param_groups(model: nn.Module, spec: TrainSpec) -> list[dict]:
    """The trainable parameters in two groups: with `spec.weight_decay`, and without (the `no_decay` policy)."""
    skip = NO_DECAY[spec.no_decay](model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in params if not skip(n, p)], "weight_decay": spec.weight_decay},
            {"params": [p for n, p in params if skip(n, p)], "weight_decay": 0.0}]


@dataclass
class Step:
    """What a step callback sees: the model (unwrapped), the 0-based epoch, the optimiser steps so far, the batch
    loss (mean over processes) and the loss's recorded parts."""
    model: nn.Module
    epoch: int
    step: int
    loss: float
    parts: dict


def train(model: nn.Module, spec: TrainSpec, data: Callable[[torch.Generator, tuple[int, int]], Iterable],
          loss: Callable[[nn.Module, Any], Any], *, groups: list[dict] | None = None,
          lr_at: Callable[[int], float] | None = None, device: torch.device | str | None = None,
          ddp: bool = True, reseed: bool = True, on_step: Callable[[Step], None] | None = None,
          on_epoch: Callable[[int, dict], None] | None = None, show_progress: bool = False,
          desc: str = "train") -> dict:
    """Train the parameters of `model` that require grad; returns the per-epoch history, the per-batch losses,
    seconds per step and per epoch, the optimiser steps, and on a GPU the peak memory.

    `data(generator, (index, count))` gives one epoch of batches; process `index` of `count` yields only its share of
    each batch (batches are drawn with the same generator on every process). With `spec.steps`, one epoch of
    `spec.steps` batches is drawn. `loss(model, batch)` returns the loss (or the loss and a dict of floats).
    `groups`: optimiser groups (each may carry its own "lr"), default `param_groups(model, spec)`. `lr_at(step)`: a
    recipe's own learning rate per optimiser step instead of the named schedule. `ddp=False` keeps one process even
    under a launcher (a loss over all pairs of a batch must not be split). `reseed=False`: the caller seeded the
    global generators and drew from them (a recipe's initial weights), and dropout goes on from there.
    `on_epoch(epoch, row)` may add entries to the epoch's row of the history."""
    from timm.scheduler import CosineLRScheduler

    if reseed:
        seed_everything(spec.seed)
    groups = [g for g in (groups or param_groups(model, spec)) if g["params"]]
    if not groups:
        raise ValueError("nothing to train: no parameter of the model requires grad")
    opt_class = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[spec.optimizer]
    opt = opt_class(groups, lr=spec.lr, betas=spec.betas, eps=spec.eps)
    acc = accelerator(device if device is not None else next(model.parameters()).device, spec.precision,
                      spec.grad_accum)
    dev, cuda = acc.device, acc.device.type == "cuda"
    dev = torch.device(device) if not ddp and device is not None else dev
    wrap = ddp and acc.num_processes > 1
    shard = (acc.process_index, acc.num_processes) if wrap else (0, 1)
    gen = torch.Generator().manual_seed(spec.seed)
    first = data(gen, shard)
    if len(first) == 0:
        raise ValueError(f"{desc}: the data give no batch to train on (an empty dataset, or every batch skipped); "
                         "check the training split and the batch size")
    epochs = 1 if spec.steps else spec.epochs
    n_batches = len(first) * epochs
    ticks = epochs if spec.tick == "epoch" else n_batches / spec.grad_accum
    length = spec.schedule_ticks or ticks
    sched = None
    if lr_at is None and spec.schedule == "cosine":
        sched = CosineLRScheduler(opt, t_initial=length, lr_min=spec.min_lr, warmup_prefix=False,
                                  warmup_t=warmup_ticks(spec.warmup, length), warmup_lr_init=spec.warmup_lr)
    elif lr_at is None and spec.schedule == "linear":
        from transformers import get_linear_schedule_with_warmup
        sched = get_linear_schedule_with_warmup(opt, warmup_ticks(spec.warmup, length), int(length))
    train_model, opt = acc.prepare(model, opt) if wrap else (model.to(dev), acc.prepare(opt))
    opt.zero_grad(set_to_none=True)   # gradients left by an earlier pass (e.g. SPT's sensitivity) must not count
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    trainable = [p for p in model.parameters() if p.requires_grad]   # model order: the clipped norm's sum order
    history, losses, steps, t_train = [], [], 0, 0.0
    bar = progress(total=n_batches, desc=desc, disable=not show_progress, leave=False)
    with block_checkpointing(model) if spec.checkpointing else nullcontext():
        for epoch in range(epochs):
            if sched is not None and spec.tick == "epoch":
                sched.step(epoch)
            batches = first if epoch == 0 else data(gen, shard)
            model.train()
            t0, epoch_losses = time.perf_counter(), []
            for batch in batches:
                if lr_at is not None:
                    for g in opt.param_groups:
                        g["lr"] = lr_at(steps)
                with acc.accumulate(train_model), acc.autocast():
                    out = loss(train_model, batch)
                    value, parts = out if isinstance(out, tuple) else (out, {})
                    acc.backward(value)
                    if acc.sync_gradients and spec.clip_grad:
                        acc.clip_grad_norm_(trainable, spec.clip_grad)
                    opt.step()     # with accumulation, accelerate steps and clears only on the last batch of a group
                    if acc.sync_gradients and sched is not None and spec.tick == "step":
                        sched.step() if spec.schedule == "linear" else sched.step_update(steps + 1)
                    opt.zero_grad(set_to_none=True)
                v = float(acc.reduce(value.detach(), "mean")) if wrap else float(value.detach())
                if not math.isfinite(v):
                    raise FloatingPointError(f"{desc}: the loss became {v} at epoch {epoch + 1}, step {steps + 1}; "
                                             "lower the learning rate or train in fp32")
                epoch_losses.append(v)
                steps += 1
                if on_step is not None:
                    on_step(Step(model, epoch, steps, v, parts))
                bar.update()
                bar.set_postfix(loss=f"{v:.3f}", refresh=False)
            t_train += time.perf_counter() - t0
            losses += epoch_losses
            row = {"epoch": epoch + 1, "loss": float(np.mean(epoch_losses)) if epoch_losses else float("nan")}
            if on_epoch is not None:
                on_epoch(epoch, row)
            history.append(row)
    bar.close()
    return {"history": history, "losses": losses, "steps": steps, "s_per_step": t_train / max(steps, 1),
            "s_per_epoch": t_train / epochs,
            "peak_mem_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else float("nan")}
