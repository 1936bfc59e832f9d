"""The VL-PET chapter as code: every gate granularity and VL-PET's baselines (full fine-tuning, VL-Adapter, LoRA,
BitFit, prompt tuning) trained the same way on four vision-language tasks; trainable shares on the paper's models,
scores, the gates, the per-seed claim, generated answers and captions, and Table 2.

    result = run(setup("ci"))            # or setup("paper", lm="t5-base", methods=["vl-pet-large", "lora"])
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .. import vltrain
from ..bench import count_parameters
from ..data import vladapter, vltasks
from ..methods import vlpet
from ..models import load_backbone, seq2seq
from ..profiles import get_profile
from ..utils import spawn_seeds
from . import core

NAME = "02_vlpet"
# The paper's Table 2 (image-text, mean of 3 seeds; VQA / GQA / NLVR2 accuracy %, COCO Karpathy-test CIDEr, their
# average), read from the official repository's images/result.png; BART-base baselines re-run by the authors, T5-base
# baselines copied from LST. Table 9 (images/apply.png) gives "VL-Adapter + G_large + LW": 4.16%, average 78.47.
PUBLISHED = {
    ("bart-base", "full"): (100, 66.88, 56.79, 73.66, 112.01, 77.33),
    ("bart-base", "bitfit"): (1.21, 52.94, 43.15, 52.29, 111.44, 64.96),
    ("bart-base", "prompt"): (2.00, 44.12, 36.37, 51.34, 105.02, 59.21),
    ("bart-base", "lora"): (5.93, 65.15, 53.66, 72.58, 115.01, 76.60),
    ("bart-base", "vl-adapter"): (4.18, 65.76, 54.16, 73.19, 114.61, 76.93),
    ("bart-base", "vl-pet-small"): (2.98, 65.43, 54.03, 72.43, 120.68, 78.14),
    ("bart-base", "vl-pet-middlex"): (2.98, 65.54, 54.53, 72.66, 120.72, 78.37),
    ("bart-base", "vl-pet-middley"): (2.98, 65.36, 53.83, 73.43, 120.31, 78.23),
    ("bart-base", "vl-pet-large"): (4.16, 66.17, 55.11, 73.43, 122.03, 79.18),
    ("bart-base", "vl-adapter+g-large"): (4.16, None, None, None, None, 78.47),
    ("t5-base", "full"): (100, 67.10, 56.30, 74.30, 112.20, 77.50),
    ("t5-base", "bitfit"): (0.83, 55.10, 45.50, 51.70, 101.20, 63.40),
    ("t5-base", "prompt"): (1.26, 47.40, 40.60, 51.00, 96.10, 58.80),
    ("t5-base", "lora"): (7.54, 63.70, 53.30, 70.00, 110.30, 74.30),
    ("t5-base", "vl-adapter"): (7.98, 67.10, 56.00, 72.70, 111.80, 76.90),
    ("t5-base", "vl-pet-small"): (4.51, 65.88, 54.96, 72.64, 120.05, 78.38),
    ("t5-base", "vl-pet-middlex"): (4.50, 66.63, 55.87, 74.11, 120.41, 79.26),
    ("t5-base", "vl-pet-middley"): (4.50, 66.62, 55.87, 73.91, 120.26, 79.17),
    ("t5-base", "vl-pet-large"): (7.31, 66.95, 56.06, 73.42, 121.66, 79.52),
}
PAPER_SEEDS = (42, 43, 9595)   # the official scripts' seeds
PUBLISHED_COLUMNS = ("trainable %", "VQA", "GQA", "NLVR2", "COCO CIDEr", "average")
SAME_SETUP = {("t5-base", m) for m in ("prompt",) + tuple(f"vl-pet-{g}" for g in ("large", "middlex", "middley",
                                                                                    "small"))}
COMPARED = ("vl-pet-large", "vl-adapter", "lora")   # the rows of the paper's claim: every seed
EXAMPLES = {"vqa": [2, 3, 4], "gqa": [2, 3], "nlvr": [1], "caption": [1, 2]}   # generated outputs shown per task


@dataclass(frozen=True)
class Setup:
    profile: str = "ci"
    seed: int = 0                    # ci: the first seed (paper: the official seeds 42, 43, 9595)
    n_seeds: int = 3                 # seeds of the rows the claim compares (the others: one), as the paper
    methods: tuple[str, ...] = vlpet.METHODS
    epochs: int = 10
    n_scenes: int = 1500             # ci: generated training scenes (test: a third as many, new ones)
    n_train: int | None = 600        # training examples per task (None: all; a number keeps a seeded subset)
    n_test: int | None = 200         # test examples per task (None: all)
    lm: str = "tiny-vl-bart"         # paper: "bart-base", "t5-base", or a local folder saved with save_pretrained
    data_root: str | None = None     # paper: the data root of prepare_vladapter.py (None: $CLIPADAPT_DATA)


SETUPS = {"ci": Setup(),
          "paper": Setup(profile="paper", epochs=20, n_train=None, n_test=None, lm="bart-base")}


def setup(profile: str = "ci", **overrides) -> Setup:
    return core.make_setup(SETUPS, profile, **overrides)


def run(s: Setup) -> core.Result:
    return core.run(NAME, compute, s)


def seeds(s: Setup) -> list[int]:
    return core.run_seeds(s) if s.lm == "tiny-vl-bart" else list(PAPER_SEEDS[:s.n_seeds])


def data(s: Setup) -> dict:
    """train and test splits and their image features: generated scenes through the tiny CLIP (the tiny VL-BART),
    or VL-Adapter's restored features and the official splits."""
    if s.lm == "tiny-vl-bart":
        clip = load_backbone("ci")
        d = {"train": vltasks.make_vl_split(s.n_scenes, s.n_train or 600, spawn_seeds(s.seed, 1, "train split")[0]),
             "test": vltasks.make_vl_split(max(s.n_scenes // 3, 2), s.n_test or 200,
                                           spawn_seeds(s.seed, 1, "test split")[0])}
        for k in ("train", "test"):
            d[f"{k}_feats"] = seq2seq.clip_grid_features(clip.model, clip.preprocess, d[k].images)
        return d
    d = {}
    for k, n in (("train", s.n_train), ("test", s.n_test)):
        d[k], d[f"{k}_feats"] = vladapter.load_vladapter(k, s.data_root, n_per_task=n, seed=seeds(s)[0])
    return d


def model_and_configs(s: Setup):
    """The pretrained model of the set-up, its training spec, full fine-tuning's rate and the baselines' sizes."""
    if s.lm == "tiny-vl-bart":
        seq2seq.ensure_tiny_lm()
        cfg = vltrain.recipe(epochs=s.epochs, batch_size=64, lr=3e-3)
        # the tiny model has 64 positions: 16 prompts + text + 2 images
        return seq2seq.load_tiny_vl(), cfg, 5e-4, vlpet.BaselineConfig(prompt_len=16)
    base = seq2seq.load_pretrained_vl(s.lm, feat_dim=vladapter.FEAT_DIM)
    t5 = "t5" in type(base.lm).__name__.lower()
    return base, vltrain.recipe(epochs=s.epochs, lr=3e-4 if t5 else 1e-3), 1e-4, vlpet.BaselineConfig()   # batch 500


def architecture_counts() -> pd.DataFrame:
    """Trainable parameters of every method on BART-base and T5-base (built on the meta device, no weights), with
    the paper's shares."""
    from transformers import BartForConditionalGeneration, T5ForConditionalGeneration
    rows = []
    for name, cls in (("bart-base", BartForConditionalGeneration), ("t5-base", T5ForConditionalGeneration)):
        with torch.device("meta"):
            arch = seq2seq.VLModel(cls(seq2seq.paper_lm_config(name)), None, 2048)
        for m in vlpet.METHODS:
            pc = count_parameters(vlpet.apply_method(copy.deepcopy(arch), m))
            pub = PUBLISHED.get((name, m))
            rows.append({"model": name, "method": m, "trainable": pc.trainable, "total": pc.total,
                         "ours (%)": round(100 * pc.fraction, 2), "published (%)": pub[0] if pub else None})
    return pd.DataFrame(rows)


def compute(s: Setup, r: core.Result) -> None:
    device = get_profile(s.profile).device
    methods = list(s.methods)
    run_seeds = seeds(s)
    d = data(s)
    base, cfg, lr_full, baseline = model_and_configs(s)
    base = base.to(device)
    r.add_table("splits", pd.DataFrame([{"split": k, "images": len(d[k].images),
                                         **{t: len(d[k].of_task(t)) for t in vltasks.TASKS}} for k in ("train", "test")]),
                index=False)
    r.text("vl_n_params", f"{sum(p.numel() for p in base.parameters()):,}")
    r.text("vl_prompt_len", baseline.prompt_len)
    r.record.info["model"] = "tiny VL-BART (ci)" if s.lm == "tiny-vl-bart" else s.lm

    # trainable shares on the paper's models
    arch = architecture_counts()
    r.add_table("architecture_counts", arch, index=False)
    share = arch.set_index(["model", "method"])["ours (%)"]
    r.text("vl_bart_large_pct", f"{share['bart-base', 'vl-pet-large']:.2f}%")
    r.text("vl_bart_adapter_pct", f"{share['bart-base', 'vl-adapter']:.2f}%")
    r.text("vl_t5_large_pct", f"{share['t5-base', 'vl-pet-large']:.2f}%")

    # every method trained the same way (the compared rows on every seed, the others on the first)
    for name, value in (("vl_lr", f"{cfg.lr:g}"), ("vl_lr_full", f"{lr_full:g}"), ("vl_batch", cfg.batch_size),
                        ("vl_epochs", cfg.epochs), ("vl_n_seeds", len(run_seeds))):
        r.text(name, value)
    untrained = vltrain.evaluate_vl(base, d["test"], d["test_feats"], device=device)
    seeds_for = {m: run_seeds[:1] for m in methods if m not in COMPARED}
    runs = vltrain.compare(lambda: copy.deepcopy(base), d, methods, run_seeds, cfg, seeds_for=seeds_for,
                           lr_full=lr_full, baseline=baseline, store=r.jobs, device=device,
                           keep=[f"vl-pet-{g}" for g in vlpet.GRANULARITIES])
    runs = pd.concat([pd.DataFrame([{"method": "pretrained, no training", "seed": run_seeds[0], "trainable": 0,
                                     "trainable_pct": 0.0, **{k: v for k, v in untrained.items() if k != "pred"},
                                     "pred": untrained["pred"]}]), runs], ignore_index=True)
    cols = list(vltasks.TASKS) + ["average"]
    runs["QA average"] = runs[["vqa", "gqa", "nlvr"]].mean(1)
    r.add_table("runs", runs.drop(columns=["pred", "loss", "model"], errors="ignore"), index=False)
    g = runs.groupby("method", sort=False)
    summary = g[cols + ["QA average"]].mean().join(g[["average"]].std().rename(columns={"average": "average sd"}))
    summary = summary.join(g[["trainable", "trainable_pct", "memory_mb", "s_per_step"]].first())
    summary = summary.join(g.size().rename("seeds"))
    r.add_table("summary", summary.rename_axis("method"))
    for m in summary.index:
        for c in cols:
            r.log(f"{c}[{m}]", summary.loc[m, c])

    # the gates of the kept models, on one question
    q = d["test"].of_task("vqa")[0]
    batch = seq2seq.collate([q], d["test_feats"], base.tokenizer)
    kept = runs.dropna(subset=["model"]) if "model" in runs else runs.iloc[:0]
    r.add_table("gates", pd.DataFrame([{"method": row.method, "G": vltrain.gate_values(row.model, batch).tolist()}
                                       for row in kept.itertuples()], columns=["method", "G"]), index=False)
    r.text("vl_gate_question", q.text)

    # the claim: VL-PET-large above VL-Adapter and LoRA on the average, per seed
    diffs = {}
    for other in ("vl-adapter", "lora"):
        if "vl-pet-large" in methods and other in methods:
            a = runs[runs.method == "vl-pet-large"].set_index("seed")
            b = runs[runs.method == other].set_index("seed")
            diffs[f"vs {other}"] = a["average"] - b["average"]
            diffs[f"vs {other} (QA average)"] = a["QA average"] - b["QA average"]
    diffs = pd.DataFrame(diffs)
    r.add_table("claims", diffs.rename_axis("seed"))
    for c in diffs.columns:
        r.log(f"average_gain_min[{c}]", diffs[c].min())
        r.log(f"average_gain_mean[{c}]", diffs[c].mean())
        r.log(f"average_gain_max[{c}]", diffs[c].max())
    main = [c for c in diffs.columns if "QA" not in c]
    # the paper's claim holds on a seed when VL-PET-large is above both
    r.claim("vl", "VL-PET-large beats VL-Adapter and LoRA", "VL-PET-large が VL-Adapter と LoRA を上回る",
            diffs[main].min(axis=1) if main else [])
    fmt = lambda m, c, spec: format(summary.loc[m, c], spec) if m in summary.index else "(not run)"   # noqa: E731
    for key, m in (("vl_avg_large", "vl-pet-large"), ("vl_avg_adapter", "vl-adapter"), ("vl_avg_lora", "lora"),
                   ("vl_avg_full", "full")):
        r.text(key, fmt(m, "average", ".1f"))
    for key, m in (("vl_cider_untrained", "pretrained, no training"), ("vl_cider_large", "vl-pet-large"),
                   ("vl_cider_adapter", "vl-adapter"), ("vl_cider_full", "full")):
        r.text(key, fmt(m, "caption", ".0f"))
    r.text("vl_ci_large_pct", fmt("vl-pet-large", "trainable_pct", ".1f") + ("%" if "vl-pet-large" in summary.index
                                                                             else ""))
    if {"vl-pet-large", "full"} <= set(summary.index):
        r.text("vl_mem_ratio", f"{summary.loc['vl-pet-large', 'memory_mb'] / summary.loc['full', 'memory_mb']:.0%}")
    else:
        r.text("vl_mem_ratio", "(not measured: run the full fine-tuning row)")
    r.text("vl_full_verdict_en", full_verdict(summary, "en"))
    r.text("vl_full_verdict_ja", full_verdict(summary, "ja"))
    for key, col in (("vl_gain_adapter", "vs vl-adapter"), ("vl_gain_adapter_qa", "vs vl-adapter (QA average)"),
                     ("vl_gain_lora", "vs lora")):
        r.text(key, f"{diffs[col].mean():+.1f}" if col in diffs else "(not run)")
    gated = [m for m in summary.index if m.startswith("vl-pet") or m == "vl-adapter+g-large"]
    if gated and "vl-adapter" in summary.index:
        lost_more = sum(summary.loc[m, "caption"] < summary.loc["vl-adapter", "caption"] for m in gated)
        r.text("vl_gated_caption_en", f"{lost_more} of the {len(gated)} gated variants lost more of it than the "
                                      "ungated adapter")
        r.text("vl_gated_caption_ja", f"ゲートのないアダプタより多くを失ったのは、ゲート付きの {len(gated)} 版のうち "
                                      f"{lost_more} 版でした")
    else:
        r.text("vl_gated_caption_en", "the gated variants were not compared with the ungated adapter in this run")
        r.text("vl_gated_caption_ja", "この実行ではゲート付きの版とゲートのないアダプタを比べていません")
    first_seed = runs[(runs.seed == run_seeds[0]) & runs["loss"].notna()]   # every method sees the same first batch
    loss0 = first_seed.set_index("method")["loss"].map(lambda ls: ls[0])
    for m, v in loss0.items():
        r.log(f"first_loss[{m}]", v)
    r.text("vl_loss0_large", f"{loss0['vl-pet-large']:.2f}" if "vl-pet-large" in loss0 else "(not run)")
    r.text("vl_loss0_adapter", f"{loss0['vl-adapter']:.2f}" if "vl-adapter" in loss0 else "(not run)")
    r.text("vl_n_train", f"{len(d['train'].of_task('vqa')):,}")

    # generated answers and captions of the first seed
    first = runs.groupby("method").first()
    who = [m for m in ("vl-pet-large", "vl-adapter", "lora", "full") if m in first.index]
    test = d["test"]
    r.add_table("examples", pd.DataFrame([
        {"task": t, "k": k, "input": f"{vltasks.PROMPTS[t]} {test.of_task(t)[k].text}",
         "truth": test.of_task(t)[k].target, **{m: first.loc[m, "pred"][t][k] for m in who}}
        for t, ks in EXAMPLES.items() for k in ks if k < len(test.of_task(t))]), index=False)

    # published and reproduced: Table 2's shares (counted on every profile) and averages (trained on paper)
    lm = "bart-base" if s.lm == "tiny-vl-bart" else s.lm
    pub = pd.DataFrame([{"method": m, **dict(zip(PUBLISHED_COLUMNS, v))} for (lmn, m), v in PUBLISHED.items()
                        if lmn == lm]).set_index("method")
    pub["our count (%)"] = share[lm].reindex(pub.index)
    trained = s.lm != "tiny-vl-bart"
    if trained:
        ours = summary.rename(columns={"vqa": "VQA", "gqa": "GQA", "nlvr": "NLVR2", "caption": "COCO CIDEr"})
        for c in ("VQA", "GQA", "NLVR2", "COCO CIDEr", "average"):
            pub[f"reproduced {c}"] = ours[c].reindex(pub.index)
    else:
        pub["reproduced average"] = "not run on this profile"
    source = ("VL-PET (ICCV 2023) Table 2" + (" and Table 9" if lm == "bart-base" else "")
              + ", the authors' images/result.png, https://github.com/HenryHZY/VL-PET")
    for m, row in pub.iterrows():
        if lm == "bart-base" or (lm, m) in SAME_SETUP:
            r.record.reproduce(f"{lm} {m}: trainable share (%)", row["trainable %"], source, row["our count (%)"],
                               tolerance=0.05, count=True)
        ours_avg = row["reproduced average"] if trained else None
        r.record.reproduce(f"{lm} {m}: average of the 4 tasks", row["average"], source,
                           None if ours_avg is None or pd.isna(ours_avg) else float(ours_avg))
    r.add_table("published", pub)


def full_verdict(summary: pd.DataFrame, lang: str) -> str:
    """Where full fine-tuning stands against the best parameter-efficient row on the average, in words."""
    others = summary["average"].drop(index=[m for m in ("full", "pretrained, no training") if m in summary.index])
    if "full" not in summary.index or others.empty:
        return ("Full fine-tuning was not compared in this run" if lang == "en"
                else "この実行では全体の微調整と比べていません")
    gap, best = summary.loc["full", "average"] - others.max(), others.idxmax()
    if lang == "en":
        return (f"Full fine-tuning was the best row, {gap:.1f} points above the best parameter-efficient one ({best})"
                if gap > 0 else f"Full fine-tuning was not the best row: {best} was {-gap:.1f} points above it")
    return (f"全体の微調整が最良で、パラメータ効率のよい手法で最も高い {best} を {gap:.1f} ポイント上回りました" if gap > 0
            else f"全体の微調整は最良ではなく、{best} が {-gap:.1f} ポイント上回りました")


def show_images(test) -> bool:
    """Whether the split carries pictures (generated scenes) rather than image ids (VL-Adapter's features)."""
    return isinstance(test.images[0], np.ndarray)
