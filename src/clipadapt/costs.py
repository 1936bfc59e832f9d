"""What each chapter's `paper` profile costs on a GPU, measured from the paper architectures on any machine.

The paper models are built with their real shapes and random weights (open_clip ViT-B/16, timm ViT-B/16, BART-base:
nothing is downloaded), the chapter's method is applied, and one training step is measured at a few small batch
sizes: the floating-point operations of its forward and backward passes (torch's `FlopCounterMode`) and the memory it
holds (`clipadapt.bench.training_memory`: weights, gradients and Adam's moments of what trains, and the activations
autograd saves). Both grow linearly with the batch, so a line through the small batches gives the paper batch's
numbers exactly, up to the allocator's slack and temporary buffers that a GPU adds.

Time is an estimate: the operations of a run divided by a sustained throughput, `utilisation` x a GPU's dense
bf16 peak. On a GPU (`device="cuda"`) every setup is also timed at its paper batch, which calibrates the estimate.
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .bench import count_parameters, time_per_step, training_memory
from .data.clips import EXPRESSIONS
from .data.corruptions import CORRUPTIONS
from .data.registry import get_spec
from .engine import block_checkpointing, checkpointed_blocks
from .methods import build_method, peclip, spt, vlpet
from .methods.batclip import PAPER_SETUPS
from .methods.tta import TTAConfig
from .models.loader import load_clip
from .models.seq2seq import VLModel, paper_lm_config
from .utils import progress

# dense bf16 tensor-core peaks from NVIDIA's datasheets (A100: "A100 Tensor Core GPU" datasheet; H100 SXM: "H100
# Tensor Core GPU" datasheet; T4 has no bf16, its fp16 peak: "T4 Tensor Core GPU" datasheet), TFLOP/s
GPU_PEAK_TFLOPS = {"T4 (Colab)": 65.0, "A100": 312.0, "H100 SXM": 989.0}


@dataclass
class StepSetup:
    """One chapter's paper training (or adaptation) step. `build()` returns the model with the method applied and
    `loss(model, sizes)` a function giving the loss of one step at `sizes` (a dict of the batch's variable sizes,
    e.g. {"images": 2}). `paper` are the paper's sizes; `steps`: the steps of the whole paper run when the code
    knows its data size (else None; the table then gives the cost per 1,000 `unit`)."""
    chapter: str
    method: str
    backbone: str
    unit: str                # what a batch holds (clips, images, examples)
    batch: int               # units in one paper step
    paper: dict[str, int]
    build: Callable[[], nn.Module]
    loss: Callable[[nn.Module, dict[str, int]], Callable[[], torch.Tensor]]
    small: dict[str, int] = field(default_factory=dict)   # the smallest measured sizes (default 1 each)
    steps: int | None = None
    run: str = ""            # what `steps` counts
    train: bool = True       # False: inference only (forward operations, weights in memory)


@contextmanager
def gpu_dropout():
    """Dropout as a GPU keeps it for the backward pass. On a GPU torch's dropout keeps a one-byte mask (its fused
    `native_dropout` kernel); on a CPU it keeps a float mask, four times larger. The page measures on the CPU what a
    GPU holds, so within this context training-mode dropout runs the GPU's kernel (same rate, same scaling)."""
    functional, original = torch.nn.functional, torch.nn.functional.dropout

    def dropout(input, p=0.5, training=True, inplace=False):
        if not training or p == 0:
            return input
        return torch.native_dropout(input, p, True)[0]
    functional.dropout = dropout
    try:
        yield
    finally:
        functional.dropout = original


def step_cost(model: nn.Module, loss_fn: Callable[[], torch.Tensor], train: bool = True) -> dict[str, float]:
    """Operations (GFLOP) of one step (forward + backward when `train`) and its memory (MiB, see bench), with and
    without activation checkpointing (`checkpointed_*`; checkpointing adds one forward pass of the blocks, counted
    as the step's forward operations, an upper bound that includes the layers outside the blocks)."""
    from torch.utils.flop_counter import FlopCounterMode

    forward = {}
    with FlopCounterMode(display=False) as fc, gpu_dropout():
        if train:
            def loss_and_count():
                value = loss_fn()
                forward["gflop"] = fc.get_total_flops() / 1e9
                return value
            mem = training_memory(model, loss_and_count, checkpointed_blocks(model))
        else:
            with torch.no_grad():
                loss_fn()
            weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
            mem = {"weights_mb": weights, "grads_and_adam_mb": 0.0, "activations_mb": 0.0, "total_mb": weights}
    out = {"gflop": fc.get_total_flops() / 1e9, **mem, "trainable": count_parameters(model).trainable,
           "total": count_parameters(model).total}
    if "checkpointed_activations_mb" in mem:
        out["checkpointed_gflop"] = out["gflop"] + forward["gflop"]
    return out


LINEAR = ("gflop", "activations_mb", "checkpointed_gflop", "checkpointed_activations_mb")


def at_paper_size(setup: StepSetup, model: nn.Module | None = None) -> dict[str, float]:
    """One step's cost at the paper's sizes, from measurements at small sizes: the smallest point, then each
    variable doubled on its own. Operations and saved activations (with and without checkpointing) are linear in the
    batch size and in the number of class prompts (a test checks the line against a direct measurement at a third
    size)."""
    model = model if model is not None else setup.build()
    base = {k: setup.small.get(k, 1) for k in setup.paper}
    c0 = step_cost(model, setup.loss(model, base), setup.train)
    out = dict(c0)
    for k in setup.paper:
        c1 = step_cost(model, setup.loss(model, {**base, k: 2 * base[k]}), setup.train)
        for key in (key for key in LINEAR if key in c0):
            slope = (c1[key] - c0[key]) / base[k]
            out[key] += slope * (setup.paper[k] - base[k])
    out["total_mb"] = out["weights_mb"] + out["grads_and_adam_mb"] + out["activations_mb"]
    if "checkpointed_activations_mb" in out:
        out["checkpointed_total_mb"] = out["weights_mb"] + out["grads_and_adam_mb"] + out["checkpointed_activations_mb"]
    return out


def time_step(setup: StepSetup, model: nn.Module, device: str, repeats: int = 3, checkpointing: bool = False) -> float:
    """Median seconds of one real step at the paper sizes on `device` (bf16 autocast and AdamW on a GPU), with the
    blocks' activations recomputed when `checkpointing`."""
    model = model.to(device)
    loss_fn = setup.loss(model, setup.paper)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params) if setup.train and params else None

    def step():
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            if opt is None:
                with torch.no_grad():
                    return loss_fn()
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    with block_checkpointing(model) if checkpointing else nullcontext():
        return time_per_step(step, warmup=1, repeats=repeats, device=device)["s_per_step"]


def paper_costs(setups: list[StepSetup], utilisation: float = 0.4, gpu: str = "A100", device: str = "cpu",
                show_progress: bool = True):
    """A table of every setup at its paper sizes: trainable parameters, memory (GiB: weights, gradients + Adam,
    activations; `ckpt_*`: with activation checkpointing, and the extra operations it costs), operations per step,
    the estimated GPU-seconds per 1,000 units and GPU-hours of the whole run (`whole_run`; else of 1,000 units) on
    `gpu` at `utilisation` of its peak; on a GPU `device` also the measured seconds per step (with and without
    checkpointing) and the GPU-hours they give."""
    import pandas as pd

    if gpu not in GPU_PEAK_TFLOPS:
        raise ValueError(f"unknown GPU {gpu!r}; known: {', '.join(GPU_PEAK_TFLOPS)}")
    if not 0 < utilisation <= 1:
        raise ValueError(f"utilisation is a share of the GPU's peak, in (0, 1]; got {utilisation}")
    rate = utilisation * GPU_PEAK_TFLOPS[gpu] * 1e12
    rows = []
    for s in progress(setups, desc="paper step costs", disable=not show_progress):
        model = s.build()
        c = at_paper_size(s, model)
        steps = s.steps if s.steps is not None else 1000 / s.batch
        row = {"chapter": s.chapter, "method": s.method, "backbone": s.backbone, "step": ", ".join(
                   f"{v:,} {k}" for k, v in s.paper.items()),
               "trainable": c["trainable"], "total": c["total"], "memory_gib": c["total_mb"] / 1024,
               "weights_gib": c["weights_mb"] / 1024, "states_gib": c["grads_and_adam_mb"] / 1024,
               "activations_gib": c["activations_mb"] / 1024, "gflop_per_step": c["gflop"],
               "unit": s.unit, "gpu_s_per_1000": c["gflop"] * 1e9 * 1000 / s.batch / rate,
               "steps": steps, "whole_run": s.steps is not None,
               "run": s.run if s.steps is not None else f"per 1,000 {s.unit}",
               "gpu_hours": c["gflop"] * 1e9 * steps / rate / 3600,
               "ckpt_memory_gib": c.get("checkpointed_total_mb", math.nan) / 1024,
               "ckpt_activations_gib": c.get("checkpointed_activations_mb", math.nan) / 1024,
               "ckpt_extra_ops_pct": 100 * (c.get("checkpointed_gflop", math.nan) / c["gflop"] - 1)}
        if torch.device(device).type == "cuda":
            row["measured_s_per_step"] = time_step(s, model, device)
            row["measured_gpu_hours"] = row["measured_s_per_step"] * steps / 3600
            if s.train:
                row["measured_ckpt_s_per_step"] = time_step(s, model, device, checkpointing=True)
        rows.append(row)
        del model
    return pd.DataFrame(rows)


# ---- the chapters' paper steps

def _label(method: str) -> str:
    return "full fine-tuning" if method in ("full", "full-finetune") else method


def _clip(name: str = "ViT-B-16"):
    return load_clip(name, None)


def _ce(model, x, k):
    return lambda: nn.functional.cross_entropy(model(x), torch.arange(len(x)) % k)


def peclip_setup(batch_clips: int = 4, frames: int = 16, full: bool = False) -> StepSetup:
    """PE-CLIP on DFEW: ViT-B/16 with ShA, TDA and prompts (depth 9, 2 vectors), AU texts; clips of 16 frames,
    batch 4 clips (the official defaults). The variable is the frames in the batch (clips x frames). `full`: the
    same model with every weight trained (full fine-tuning of the backbone, for comparison)."""

    def build():
        clip = _clip()
        model = peclip.build_variant("PE-CLIP", clip.model, clip.tokenizer, EXPRESSIONS, n_ctx=2, depth=9)[1]
        return model.requires_grad_(True) if full else model

    def loss(model, n):
        return _ce(model, torch.randn(n["frames"] // 2, 2, 3, 224, 224), len(EXPRESSIONS))
    label = "full fine-tuning" if full else "PE-CLIP (ShA + TDA + prompts)"
    return StepSetup("PE-CLIP", label, "CLIP ViT-B/16", "clips", batch_clips,
                     {"frames": batch_clips * frames}, build, loss, small={"frames": 2})


def vlpet_setup(method: str = "vl-pet-large", batch: int = 500, text_tokens: int = 20, target_tokens: int = 20,
                visual_tokens: int = 36) -> StepSetup:
    """VL-PET on VL-Adapter's four tasks: BART-base with the method's modules, batch 500 (official), 36 CLIP RN101
    grid tokens of 2048 dimensions per image; `text_tokens` / `target_tokens` are the lengths of a question and an
    answer or caption (assumed: the prompt plus a short question; targets are capped at 20 generated tokens)."""
    from transformers import BartForConditionalGeneration


    def build():
        return vlpet.apply_method(VLModel(BartForConditionalGeneration(paper_lm_config("bart-base")), None, 2048),
                                  method)

    def loss(model, n):
        b = n["examples"]
        batch = {"input_ids": torch.randint(5, 50000, (b, text_tokens)), "attention_mask": torch.ones(b, text_tokens),
                 "feats": torch.randn(b, visual_tokens, 2048), "order": torch.zeros(b, visual_tokens, dtype=torch.long),
                 "vis_mask": torch.ones(b, visual_tokens), "labels": torch.randint(5, 50000, (b, target_tokens))}
        return lambda: model(batch)
    return StepSetup("VL-PET", _label(method), "BART-base", "examples", batch, {"examples": batch}, build, loss)


def embedding_setup(batch: int = 128, text_tokens: int = 512) -> StepSetup:
    """The contrastive chapter's GPU work: embedding every MM-IMDb movie once with the frozen encoders (ViT-B/16
    image [CLS], BERT-base text at its 512-token limit, an upper bound); the heads then train in minutes."""
    from transformers import BertConfig, BertModel

    def build():
        import timm
        vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
        return nn.ModuleDict({"image": vit, "text": BertModel(BertConfig())}).eval().requires_grad_(False)

    def loss(model, n):
        x, ids = torch.randn(n["items"], 3, 224, 224), torch.randint(0, 30000, (n["items"], text_tokens))
        return lambda: model["image"](x).sum() + model["text"](input_ids=ids).last_hidden_state[:, 0].sum()
    return StepSetup("Contrastive DA", "embed (frozen ViT-B/16 + BERT-base)", "ViT-B/16 + BERT-base", "items", batch,
                     {"items": batch}, build, loss, train=False)


def batclip_setup(dataset: str = "imagenet-c") -> StepSetup:
    """BATCLIP on a corruption benchmark: ViT-B/16 with only the LayerNorms of both towers trained, one step per test
    batch (64 on ImageNet-C, 200 on CIFAR), the text tower over every class prompt each step; all 15 corruptions at
    one severity, every image of the release."""
    spec, batch = get_spec(dataset), PAPER_SETUPS[dataset]["batch_size"]

    tokenizer = {}

    def build():
        clip = _clip()
        tokenizer["t"] = clip.tokenizer
        build_method("batclip", clip.model, clip.tokenizer, spec.classes[:2])   # freezes all but the LayerNorms
        return clip.model

    def loss(model, n):   # the method's own forward and loss over n["classes"] class prompts
        m = build_method("batclip", model, tokenizer["t"], (spec.classes * 2)[:n["classes"]])
        x = torch.randn(n["images"], 3, 224, 224)
        return lambda: m.loss(m.outputs(x))
    n_images = len(CORRUPTIONS) * spec.per_severity
    return StepSetup("BATCLIP", f"BATCLIP ({spec.folder})", "CLIP ViT-B/16", "images", batch,
                     {"images": batch, "classes": len(spec.classes)}, build, loss,
                     steps=math.ceil(spec.per_severity / batch) * len(CORRUPTIONS),
                     run=f"15 streams x {spec.per_severity:,} images ({n_images:,})")


def prompt_positions(dataset: str, model: str = "ViT-B-16") -> int:
    """Token positions the text tower computes for `dataset`'s class prompts at every BATCLIP step: up to the longest
    prompt's end token (`methods.tta.encode_prompts`), of the tokenizer's context of 77."""
    import open_clip

    tokens = open_clip.get_tokenizer(model)([TTAConfig().template.format(c) for c in get_spec(dataset).classes])
    return int(tokens.argmax(dim=-1).max()) + 1


def spt_setup(method: str = "spt-lora", budget: int = 800_000, tasks: int = 19, epochs: int = 100,
              candidates: int = 4) -> StepSetup:
    """SPT on VTAB-1k: timm ViT-B/16 at batch 64 with the method applied (SPT-LoRA at the largest swept budget);
    every task trains `candidates` budgets on train800 (scored on val200) and the chosen one on all 1,000 images,
    `epochs` each; the sensitivity pass (16 batches of 32) is small beside that and left out."""
    import timm


    def build():
        vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=100)
        data = torch.utils.data.TensorDataset(torch.randn(64, 3, 224, 224), torch.arange(64) % 100)
        spt.prepare(method, vit, data, budget=budget, sensitivity_batches=2, sensitivity_batch_size=2)
        return vit

    def loss(model, n):
        return _ce(model, torch.randn(n["images"], 3, 224, 224), 100)
    steps = tasks * epochs * (candidates * math.ceil(800 / 64) + math.ceil(1000 / 64))
    label = f"{method} ({budget:,} parameters)" if method.startswith("spt") else _label(method)
    return StepSetup("SPT", label, "ViT-B/16 (ImageNet-21k)", "images", 64,
                     {"images": 64}, build, loss, steps=steps,
                     run=f"{tasks} tasks x ({candidates} budgets on 800 + 1 on 1,000) x {epochs} epochs")


def chapter_setups() -> list[StepSetup]:
    """Every chapter's paper step, with a full fine-tuning row where the chapter compares against it."""
    return [peclip_setup(), peclip_setup(full=True), vlpet_setup("vl-pet-large"), vlpet_setup("full"), embedding_setup(),
            batclip_setup("cifar10-c"), batclip_setup("imagenet-c"), spt_setup("spt-lora"), spt_setup("spt-adapter"),
            spt_setup("full-finetune")]
