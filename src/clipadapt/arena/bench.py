"""The arena's benchmark: the ratios the papers' efficiency claims rest on, measured in one run
(`python -m clipadapt.arena bench`), and BATCLIP's step against zero-shot inference on a paper architecture
(`python -m clipadapt.arena tta-step`)."""
from __future__ import annotations

import torch

from ..bench import count_parameters, time_per_step
from ..data import vtab
from ..data.registry import get_spec
from ..engine import TrainSpec
from ..finetune import fit_classifier
from ..methods import build_method
from ..methods import spt as spt_mod
from ..models.loader import load_backbone, load_clip
from ..profiles import activate, get_profile
from ..utils import atomic_write, progress, seed_everything
from .core import ARENA, FULL, ArenaConfig, Context, _dataset, _vit, build, get_method, step_memory_mb

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
      with a linear head, or CLIP's two towers with the text head), also with activation checkpointing against full
      fine-tuning without it, and its trainable parameters against its total.
    Every timing is the median of `repeats` after one warm-up; the raw values are returned too.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1 (every timing is the median of that many timed calls), got "
                         f"{repeats}; pass --repeats 5 (the default) or any count of 1 or more")
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
    epoch = fit_classifier(spt_mod.full_finetune(vit), trainval, test, TrainSpec(epochs=1, batch_size=64,
                           warmup=0.0, eval_every=1, eval_last=1, seed=seed))["s_per_epoch"]
    raw["one training epoch s (full fine-tuning)"] = {"s_per_step": epoch}
    rows.append({"ratio": "SPT sensitivity pass s / one training epoch s", "value": sens / epoch,
                 "detail": f"16 batches of 32: {sens:.2f} s; an epoch of {len(trainval)} images: {epoch:.2f} s"})
    # memory and parameters of every method
    mem, ckpt, params = {}, {}, {}
    for m in progress(methods, desc="arena methods", disable=not show_progress):
        seed_everything(seed)
        built = build(get_method(m), Context(load_backbone(profile), tuple(t.classes), trainval, cfg))
        built.model.to(dev)
        params[m] = count_parameters(built.model)
        if built.fit is not None:   # frozen embeddings: what its own training holds and trains
            r = built.fit(trainval, test, seed)
            params[m] = type(params[m])(r["trainable"], params[m].total + r["trainable"])
            mem[m] = r["train_mb"]
        elif params[m].trainable:
            mem[m] = step_memory_mb(built.model, trainval, cfg.fit.batch_size)
            ckpt[m] = step_memory_mb(built.model, trainval, cfg.fit.batch_size, checkpointing=True)
            raw[f"{m}: training memory with checkpointing MiB"] = ckpt[m]
        else:
            mem[m] = 0.0
        raw[f"{m}: training memory MiB"] = mem[m]
    for m in methods:
        ref = FULL[ARENA[m].backbone]
        if params[m].trainable and m != ref:
            rows.append({"ratio": f"training memory / {ref}: {m}", "value": mem[m] / mem[ref],
                         "detail": f"{mem[m]:.1f} MiB vs {mem[ref]:.1f} MiB"})
    for m in methods:
        ref = FULL[ARENA[m].backbone]
        if m in ckpt and m != ref:
            rows.append({"ratio": f"training memory with checkpointing / {ref} without: {m}",
                         "value": ckpt[m] / mem[ref], "detail": f"{ckpt[m]:.1f} MiB vs {mem[ref]:.1f} MiB"})
    for m in methods:
        rows.append({"ratio": f"trainable / total parameters: {m}", "value": params[m].fraction,
                     "detail": f"{params[m].trainable:,} of {params[m].total:,}"})
    return {"ratios": rows, "raw": raw, "profile": profile, "task": task, "repeats": repeats}


def tta_step(model: str = "ViT-B-16", batch: int = 16, classes: int = 10, repeats: int = 5, seed: int = 0) -> dict:
    """BATCLIP's adaptation step (predict, then one step on the LayerNorms of both towers) against zero-shot
    inference of the same batch, on the open_clip architecture `model` with random weights (the time of a step does
    not depend on the weights), fp32 on the CPU with this process's threads; `classes` prompts from CIFAR-10-C's
    class names (repeated when more are asked). Medians of `repeats` after a warm-up, measured in this one run."""
    if batch < 2:
        raise ValueError(f"BATCLIP adapts on batches of at least 2 images, got batch={batch}")
    if classes < 1 or repeats < 1:
        raise ValueError(f"classes and repeats must be at least 1, got classes={classes}, repeats={repeats}")
    names = get_spec("cifar10-c").classes
    names = [names[i % len(names)] + ("" if i < len(names) else f" {i // len(names)}") for i in range(classes)]
    seed_everything(seed)
    built, x = {}, None
    for name, kw in (("source", {}), ("batclip", {"lr": 1e-4})):
        clip = load_clip(model)
        built[name] = build_method(name, clip.model, clip.tokenizer, names, **kw)
        x = torch.randn(batch, 3, clip.image_size, clip.image_size) if x is None else x
    zs = time_per_step(lambda: built["source"](x), warmup=1, repeats=repeats)["s_per_step"]
    bc = time_per_step(lambda: built["batclip"](x), warmup=1, repeats=repeats)["s_per_step"]
    return {"model": model, "batch": batch, "classes": classes, "zero_shot_s": zs, "batclip_s": bc, "ratio": bc / zs}


def main(argv=None) -> int:
    import argparse
    import json
    from pathlib import Path

    import pandas as pd

    p = argparse.ArgumentParser(prog="python -m clipadapt.arena", description="The arena's benchmark: efficiency "
                                "ratios measured in one run, printed and saved with the raw timings.")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="measure and print the ratios")
    b.add_argument("--profile", default="ci")
    b.add_argument("--methods", nargs="+", default=None, help=f"arena methods (default all: {', '.join(ARENA)})")
    b.add_argument("--task", default="digits")
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--out", default="results/arena-bench.json", help="where the raw timings and ratios are saved")
    t = sub.add_parser("tta-step", help="BATCLIP's step against zero-shot inference on a paper architecture")
    t.add_argument("--model", default="ViT-B-16", help="open_clip architecture (random weights)")
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--classes", type=int, default=10)
    t.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    if a.cmd == "tta-step":
        try:
            r = tta_step(a.model, a.batch, a.classes, a.repeats)
        except ValueError as e:
            p.exit(2, f"error: {e}\n")
        print(f"{r['model']}, batch {r['batch']}, {r['classes']} prompts, fp32: zero-shot {r['zero_shot_s']:.3f} s, "
              f"BATCLIP step {r['batclip_s']:.3f} s, ratio {r['ratio']:.2f}")
        return 0
    activate(a.profile)
    try:
        res = benchmark(a.methods, a.profile, a.task, a.repeats)
    except ValueError as e:
        p.exit(2, f"error: {e}\n")
    out = Path(a.out)
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(res, indent=1)))
    with pd.option_context("display.max_colwidth", 80, "display.width", 200):
        print(pd.DataFrame(res["ratios"]).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"raw timings: {out}")
    return 0
