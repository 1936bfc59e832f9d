"""Training and evaluating an encoder-decoder vision-language model on the four tasks, as VL-PET's official
image-text scripts do (multi-task batches of one task each, AdamW with linear warm-up and decay, clipping, on the
project's training engine; greedy
answers, beam-searched captions scored by CIDEr), and the comparison of methods the VL-PET chapter runs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd
import torch

from .bench import count_parameters, training_memory
from .checkpoints import JobStore, load_weights
from .data.vltasks import TASKS
from .engine import TrainSpec, train
from .eval import cider, normalize_answer
from .methods.vlpet import METHODS, BaselineConfig, PETAttention, apply_method, is_t5
from .models.seq2seq import collate, to_device
from .utils import progress, seed_everything


def recipe(**changes) -> TrainSpec:
    """The official image-text recipe (scripts/image-text/*.sh, src/param.py) as a training spec: AdamW (eps 1e-6,
    wd 0.01, none on biases and LayerNorms), linear warm-up over 10% then linear decay per step, gradient clipping 5,
    20 epochs, batch 500, lr 1e-3 (full fine-tuning 1e-4, `compare`'s `lr_full`; T5 3e-4). `changes` override it."""
    return TrainSpec(epochs=20, batch_size=500, lr=1e-3, weight_decay=0.01, no_decay="bias-norm", eps=1e-6,
                     schedule="linear", tick="step", warmup=0.1, clip_grad=5.0).replace(**changes)


@dataclass(frozen=True)
class Decoding:
    """Beam 5 for captions and greedy answers (NLVR by the likelier of true / false), as the official evaluation."""
    num_beams: int = 5
    max_new_tokens: int = 20
    eval_batch: int = 256


def task_batches(split, batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """One epoch of batches, each from a single task (as the official MultitaskLoader), in a shuffled order."""
    out = []
    for task in TASKS:
        idx = [i for i, e in enumerate(split.examples) if e.task == task]
        perm = torch.randperm(len(idx), generator=gen).tolist()
        out += [[idx[j] for j in perm[b:b + batch_size]] for b in range(0, len(idx), batch_size)]
    return [out[k] for k in torch.randperm(len(out), generator=gen).tolist()]


def train_vl(model, split, feats, cfg: TrainSpec, seed: int = 0, show_progress: bool = False,
             desc: str = "train", lr: float | None = None, device: str = "cpu") -> list[float]:
    """Multi-task training on all of `split`'s examples (single-task batches, tasks interleaved) on `device` with
    `clipadapt.engine.train`; the loss per step. Under a distributed launcher each process takes its share of
    every batch (DDP); `cfg` sets precision and gradient accumulation."""
    spec = cfg.replace(seed=seed, lr=lr if lr is not None else cfg.lr)

    def data(gen, shard):
        return [idx[shard[0]::shard[1]] for idx in task_batches(split, spec.batch_size, gen)]

    def loss(m, idx):
        return m(to_device(collate([split.examples[i] for i in idx], feats, model.tokenizer),
                           next(m.parameters()).device))

    run = train(model, spec, data, loss, device=device, show_progress=show_progress, desc=desc)
    model.eval()
    return run["losses"]


def answer_score(pred: str, example) -> float:
    """The score of a generated answer: the weight of the reference it matches after answer normalisation (VQA
    v2's soft score, as the official `evaluate`: the label's score of the answer), 1 when the references carry no
    weights, 0 when none matches."""
    weights = example.weights or (1.0,) * len(example.references)
    p = normalize_answer(pred)
    return max((w for r, w in zip(example.references, weights) if normalize_answer(r) == p), default=0.0)


def evaluate_vl(model, split, feats, cfg: Decoding = Decoding(), device: str = "cpu") -> dict:
    """Scores per task (VQA / GQA / NLVR accuracy %, caption CIDEr) and their average, with the predictions."""
    model.eval()
    out = {"pred": {}}
    for task in TASKS:
        ex = split.of_task(task)
        pred = []
        for i in range(0, len(ex), cfg.eval_batch):
            chunk = ex[i:i + cfg.eval_batch]
            batch = to_device(collate(chunk, feats, model.tokenizer, with_targets=False), device)
            if task == "nlvr":
                pred += [("true", "false")[k] for k in model.choose(batch, ["true", "false"])]
            else:
                beams = cfg.num_beams if task == "caption" else 1
                pred += model.generate(batch, num_beams=beams, max_new_tokens=cfg.max_new_tokens)
        out["pred"][task] = pred
        if task == "caption":
            out[task] = cider(pred, [e.references for e in ex])
        else:
            out[task] = 100.0 * sum(answer_score(p, e) for p, e in zip(pred, ex)) / max(len(ex), 1)
    out["average"] = sum(out[t] for t in TASKS) / len(TASKS)
    return out


@torch.no_grad()
def gate_values(model, batch: dict, layer: int = 0) -> torch.Tensor:
    """G of the self-attention sublayer of encoder `layer` for the first example of `batch`, broadcast to
    tokens x dimensions (what each granularity lets vary)."""
    enc = model.lm.encoder.block if is_t5(model.lm) else model.lm.model.encoder.layers
    sub = enc[layer].layer[0].SelfAttention if is_t5(model.lm) else enc[layer].self_attn
    if not isinstance(sub, PETAttention) or sub.pet.gate is None:
        raise ValueError("this model has no VL-PET gate; apply a vl-pet-* method first")
    batch = to_device(batch, next(model.parameters()).device)
    seen = {}
    hook = sub.pet.gate.register_forward_hook(lambda m, args, out: seen.setdefault("g", out))
    try:
        embeds, _ = model.encoder_inputs(batch)
        model(batch)
    finally:
        hook.remove()
    n, d = embeds.shape[1], embeds.shape[2]
    return torch.broadcast_to(seen["g"], (embeds.shape[0], n, d))[0].cpu()


def compare(load_model, data: dict, methods=METHODS, seeds=(0,), cfg: TrainSpec | None = None,
            seeds_for: dict[str, tuple] | None = None, show_progress: bool = True, keep=(),
            baseline: BaselineConfig = BaselineConfig(), device: str = "cpu", lr_full: float = 1e-4,
            decode: Decoding = Decoding(), store: JobStore | None = None):
    """Train every method from a fresh copy of the pretrained model (`load_model()` returns a `VLModel`) on
    data["train"] and score it on data["test"] (each a `VLSplit`, with features in data["train_feats"] /
    data["test_feats"]), full fine-tuning at `lr_full`. `baseline` sizes the baselines. `seeds_for` gives some
    methods other seeds (e.g. one seed for the rows no claim compares).
    Rows: method, seed, the four task scores and their average, trainable parameters and share, training memory of
    one step (MiB), seconds per step, the loss curve and the predictions; for methods in `keep`, the trained model
    of the first seed. `store` keeps each (method, seed) job's row and trained weights: a stopped run resumes there."""
    cfg = cfg or recipe()
    seeds_for = seeds_for or {}
    jobs = [(m, s) for m in methods for s in seeds_for.get(m, seeds)]
    rows, store, trained = [], store if store is not None else JobStore(None), {}

    def build(method, seed):
        seed_everything(seed)
        return apply_method(load_model(), method, base=baseline).to(device)

    def job(method, seed):
        trained["model"] = model = build(method, seed)
        pc = count_parameters(model)
        ex = data["train"].of_task("vqa")[:cfg.batch_size]
        model.train()
        mem = training_memory(model, lambda: model(to_device(collate(ex, data["train_feats"], model.tokenizer),
                                                             device)))
        t0 = time.perf_counter()
        losses = train_vl(model, data["train"], data["train_feats"], cfg, seed=seed,
                          lr=lr_full if method == "full" else cfg.lr, device=device)
        train_s = time.perf_counter() - t0
        scores = evaluate_vl(model, data["test"], data["test_feats"], decode, device=device)
        row = {"method": method, "seed": seed, **{k: v for k, v in scores.items() if k != "pred"},
               "trainable": pc.trainable, "trainable_pct": 100 * pc.fraction, "memory_mb": mem["total_mb"],
               "s_per_step": train_s / len(losses), "loss": losses, "pred": scores["pred"]}
        return row, model, {}

    for method, seed in progress(jobs, desc="VL-PET comparison", disable=not show_progress):
        trained.clear()
        done, stored = store.run((method, seed), lambda: job(method, seed))
        row = dict(done["row"])
        if method in keep and seed == seeds_for.get(method, seeds)[0]:
            row["model"] = load_weights(build(method, seed), done["weights"]).eval() if stored else trained["model"]
        rows.append(row)
    return pd.DataFrame(rows)
