"""The PE-CLIP chapter as code: the ablation of PE-CLIP's parts (zero-shot with class names and with Action-Unit
texts, linear probe, MaPLe prompts, ShA, TDA, full fine-tuning) on face clips, trainable parameters per group,
confusion matrices, the per-seed claims, which words the frozen model knows, the official GRU's leak across videos,
and the published UAR / WAR.

    result = run(setup("ci"))            # or setup("paper", dataset="dfew", folds=[1])
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open_clip
import pandas as pd
import torch

from ..bench import count_parameters
from ..data import clips, dfer
from ..data.clips import AU_DESCRIPTIONS, EXPRESSIONS
from ..engine import TrainSpec
from ..eval import confusion_matrix, encode_images, encode_texts, uar_war, zero_shot_predict
from ..methods import peclip
from ..models import load_backbone
from ..models.prompts import MultiModalPrompts
from ..profiles import get_profile
from ..utils import spawn_seeds
from . import core

NAME = "01_peclip"
README = "the authors' README, https://github.com/SAADI-Ibtissam/PE-CLIP"
DFER_CLIP = "the authors' img/performance.png, https://github.com/zengqunzhao/DFER-CLIP"
PUBLISHED = pd.DataFrame([   # UAR / WAR (%), CLIP ViT-B/16
    {"method": "PE-CLIP", "dataset": "dfew", "UAR": 62.82, "WAR": 74.04, "source": README},
    {"method": "PE-CLIP", "dataset": "ferv39k", "UAR": 41.57, "WAR": 51.26, "source": README},
    {"method": "PE-CLIP", "dataset": "afew", "UAR": 53.85, "WAR": 58.49, "source": README},
    {"method": "DFER-CLIP", "dataset": "dfew", "UAR": 59.61, "WAR": 71.25, "source": DFER_CLIP},
    {"method": "DFER-CLIP", "dataset": "ferv39k", "UAR": 41.27, "WAR": 51.65, "source": DFER_CLIP},
])
# the rows the claims compare run on every seed, the others on the first only
COMPARED = ("zero-shot, class names", "zero-shot, AU texts", "linear probe", "PE-CLIP",
            "PE-CLIP, TDA replaced by mean pooling")
CLAIMS = {   # key: (label, claimed better, reference, en, ja)
    "pe_probe": ("PE-CLIP − linear probe", "PE-CLIP", "linear probe", "PE-CLIP beats a linear probe",
                 "PE-CLIP が線形プローブを上回る"),
    "pe_zs": ("PE-CLIP − zero-shot (AU)", "PE-CLIP", "zero-shot, AU texts", "PE-CLIP beats zero-shot",
              "PE-CLIP がゼロショットを上回る"),
    "pe_tda": ("TDA − mean pooling", "PE-CLIP", "PE-CLIP, TDA replaced by mean pooling",
               "the temporal adapter beats mean pooling", "時間方向のアダプタが平均プーリングを上回る"),
    "pe_au": ("zero-shot: AU texts − names", "zero-shot, AU texts", "zero-shot, class names",
              "AU descriptions beat class names zero-shot", "ゼロショットで AU の記述がクラス名を上回る"),
}
# the optimiser and schedule: ci's for 400 short clips on a CPU; paper's as the official scripts (batch 4, 16 frames)
FIT = {"ci": dict(batch_size=8, lr=2e-3, weight_decay=1e-2, warmup_epochs=1, warmup_lr=1e-5, min_lr=1e-5,
                  eval_every=1),
       "paper": dict(batch_size=4, weight_decay=1e-2, warmup_epochs=3, warmup_lr=2e-5, schedule_ticks=30, min_lr=1e-6,
                     eval_every=1, mixup=0.4)}
LRS = {"ci": dict(lr_adapters=2e-3, lr_prompts=2e-3, lr_full=2e-4, lr_probe=1e-1), "paper": {}}


@dataclass(frozen=True)
class Setup:
    profile: str = "ci"
    seed: int = 0
    n_seeds: int = 2                 # seeds of the rows the claims compare (the others: the first seed)
    frames: int = 16                 # frames per clip (the official 16 segments)
    epochs: int = 7
    n_train: int = 400               # ci: generated clips per split (subject-independent)
    n_val: int = 150
    n_test: int = 300
    variants: tuple[str, ...] = tuple(peclip.VARIANTS)
    prompt_depth: int = 4            # blocks with prompts (ci: all of the tiny model's; paper: 9 of 12, official)
    dataset: str = "clips"           # "clips" (generated) or a DFER dataset: dfew, ferv39k, afew
    folds: tuple[int, ...] | None = None   # DFER folds (None: all of the dataset's)
    model: str = "ViT-B-16"          # paper: open_clip name and pretrained tag
    pretrained: str = "openai"
    data_root: str | None = None     # paper: folder with dfer/<dataset>/ (None: $CLIPADAPT_DATA)
    num_workers: int = 0             # frame-reading workers


SETUPS = {"ci": Setup(),
          "paper": Setup(profile="paper", n_seeds=1, epochs=5, prompt_depth=9, dataset="dfew", num_workers=8,
                         variants=("zero-shot, class names", "zero-shot, AU texts", "PE-CLIP"))}


def setup(profile: str = "ci", **overrides) -> Setup:
    return core.make_setup(SETUPS, profile, **overrides)


def run(s: Setup) -> core.Result:
    return core.run(NAME, compute, s)


def example_clips(s: Setup):
    """One generated clip per expression (frames, apex, labels) for the chapter's picture, or None off the clips."""
    if s.dataset != "clips":
        return None
    show = clips.make_clips(7 * 12, s.frames, spawn_seeds(s.seed, 1, "clips shown")[0])
    pick = [int(np.flatnonzero(show.labels == k)[0]) for k in range(len(EXPRESSIONS))]
    return [{"expression": EXPRESSIONS[show.labels[i]], "frames": show.frames[i], "apex": int(show.apex[i])}
            for i in pick]


def _groups(clip, depth: int) -> dict[str, float]:
    total = count_parameters(clip).total
    peclip.add_adapters(clip)
    g = peclip.adapter_groups(clip)
    g["MaPLe prompts"] = count_parameters(MultiModalPrompts(clip, 2, depth)).total
    g["all trained"] = sum(g.values())
    g["share of the model (%)"] = 100 * g["all trained"] / (total + g["all trained"])
    return g


@torch.no_grad()
def logits_in_order(model, data, order, batch_size: int = 4) -> torch.Tensor:
    """Logits of every clip of `data`, fed in batches of `batch_size` in the given order; returned in data order."""
    model.eval()
    dev = next(model.parameters()).device
    out = torch.cat([model(data[order[i:i + batch_size].tolist()][0].to(dev)).cpu()
                     for i in range(0, len(order), batch_size)])
    return out[np.argsort(order)]


def _set_leak(model, flag: bool) -> None:
    for m in model.modules():
        if isinstance(m, peclip.TemporalAdapter):
            m.leak_across_videos = flag


def compute(s: Setup, r: core.Result) -> None:
    device = get_profile(s.profile).device
    load = lambda: load_backbone(s.profile, (s.model, s.pretrained), device=device)   # noqa: E731
    bb = load()
    fit = dict(FIT[s.profile])
    warm = fit.pop("warmup_epochs")   # the warm-up as the official scripts state it, in epochs of the schedule
    fit = TrainSpec(epochs=s.epochs, num_workers=s.num_workers, warmup=warm / fit.get("schedule_ticks", s.epochs), **fit)
    cfg = peclip.AblationConfig(depth=s.prompt_depth, **LRS[s.profile])
    if s.dataset == "clips":
        split = clips.make_split(s.n_train, s.n_val, s.n_test, s.frames, s.seed)
        folds = {1: {k: peclip.video_dataset(c.frames, c.labels, bb.preprocess) for k, c in split.items()}}
        r.add_table("expressions", pd.DataFrame({
            "expression": EXPRESSIONS, "AU description (class text)": AU_DESCRIPTIONS,
            "train clips": np.bincount(split["train"].labels, minlength=7)}), index=False)
    else:   # the official optimiser, schedule and batch; 16 frames at 224 px; model selection on a validation split
        split = None
        which = s.folds or tuple(range(1, dfer.get_dfer(s.dataset).folds + 1))
        folds = {f: dfer.load_dfer(s.dataset, bb.preprocess, f, s.data_root, s.frames) for f in which}
    first_fold = next(iter(folds))
    seeds = core.run_seeds(s)
    r.add_table("folds", pd.DataFrame([{"fold": f, **{k: len(d[k]) for k in ("train", "val", "test")}}
                                       for f, d in folds.items()]), index=False)

    # trainable parameters per group, on ViT-B/16 (built without weights) and this run's backbone
    vit_b = _groups(open_clip.create_model("ViT-B-16", pretrained=None), 9)
    ours = _groups(load().model, cfg.depth)
    r.add_table("parameters", pd.DataFrame({"ViT-B/16 (paper)": vit_b, f"{bb.name} (this run)": ours})
                .rename_axis("group"))
    r.text("pe_vitb_total", f"{vit_b['all trained']:,}")
    r.text("pe_vitb_share", f"{vit_b['share of the model (%)']:.1f}%")

    # the ablation: every variant from a fresh CLIP, per fold and seed
    variants = list(s.variants)
    plan = [([v for v in variants if v in COMPARED], seeds), ([v for v in variants if v not in COMPARED], seeds[:1])]
    runs = []
    for fold, data in folds.items():
        for names, run_seeds in plan:
            if names:
                df = peclip.ablation(load, data, {v: peclip.VARIANTS[v] for v in names}, run_seeds, fit, cfg,
                                     keep=("PE-CLIP",) if fold == first_fold else (), store=r.jobs,
                                     key=(f"fold{fold}",))
                runs.append(df.assign(fold=fold))
    runs = pd.concat(runs, ignore_index=True)
    r.add_table("runs", runs.drop(columns=["pred", "history", "model"], errors="ignore"), index=False)
    per_run = runs.groupby(["variant", "seed"])[["uar", "war"]].mean()   # mean over folds
    by = runs.groupby("variant")
    summary = pd.DataFrame({
        "UAR": per_run.uar.groupby("variant").mean(), "± UAR": per_run.uar.groupby("variant").std(),
        "WAR": per_run.war.groupby("variant").mean(), "± WAR": per_run.war.groupby("variant").std(),
        "trainable": by.trainable.first(), "memory (MiB)": by.memory_mb.mean(), "s / step": by.s_per_step.mean(),
    }).loc[variants]
    r.add_table("summary", summary.rename_axis("variant"))
    for v in variants:
        r.log(f"uar[{v}]", summary.loc[v, "UAR"])
        r.log(f"war[{v}]", summary.loc[v, "WAR"])
    for key, v in [("pe_uar_full", "PE-CLIP"), ("pe_uar_probe", "linear probe"), ("pe_uar_zs_au", "zero-shot, AU texts"),
                   ("pe_uar_zs_names", "zero-shot, class names"), ("pe_uar_mean", "PE-CLIP, TDA replaced by mean pooling")]:
        r.text(key, f"{summary.loc[v, 'UAR']:.1f}% (± {summary.loc[v, '± UAR']:.1f})" if v in summary.index
               else "not run")
    r.text("pe_n_seeds", s.n_seeds)
    r.text("pe_frames", s.frames)
    r.text("pe_lr_peft", f"{cfg.lr_adapters:g}")
    r.text("pe_lr_full", f"{cfg.lr_full:g}")
    r.text("pe_lr_probe", f"{cfg.lr_probe:g}")
    if "PE-CLIP" in summary.index:
        r.text("pe_frac_trainable", f"{100 * summary.loc['PE-CLIP', 'trainable'] / count_parameters(load().model).total:.1f}%")
    if {"PE-CLIP", "full fine-tuning"} <= set(summary.index):
        mem = summary.loc["PE-CLIP", "memory (MiB)"] / summary.loc["full fine-tuning", "memory (MiB)"]
        r.text("pe_mem_ratio", f"{mem:.0%}")
    else:
        r.text("pe_mem_ratio", "(not measured: run the full fine-tuning row)")

    # where the errors are: confusion matrices of the first seed and fold
    y_test = folds[first_fold]["test"]
    y_test = (y_test.tensors[1] if hasattr(y_test, "tensors") else y_test.labels).numpy()
    first = runs[(runs.seed == seeds[0]) & (runs.fold == first_fold)].set_index("variant")
    cms = []
    for v in [v for v in ("zero-shot, AU texts", "PE-CLIP") if v in first.index]:
        cm = pd.DataFrame(100 * confusion_matrix(first.loc[v, "pred"], y_test, len(EXPRESSIONS)),
                          index=list(EXPRESSIONS), columns=list(EXPRESSIONS))
        cms.append(cm.rename_axis("true").reset_index().assign(
            variant=v, title=f"{v}: UAR {first.loc[v, 'uar']:.1f}, WAR {first.loc[v, 'war']:.1f}"))
    r.add_table("confusion", pd.concat(cms), index=False)

    # the claims, per seed
    uar = per_run.uar.unstack(0)
    diffs = pd.DataFrame({label: uar[a] - uar[b] for label, a, b, *_ in CLAIMS.values() if a in uar and b in uar})
    r.add_table("claims", diffs)
    for label in diffs:
        r.log(f"uar_gain_min[{label}]", diffs[label].min())
        r.log(f"uar_gain_mean[{label}]", diffs[label].mean())
    for key, (label, _, _, en, ja) in CLAIMS.items():
        r.claim(key, en, ja, diffs[label] if label in diffs else [])

    # which words the frozen model knows: zero-shot on the apex frame (generated clips, where the apex is known)
    if split is not None:
        te = split["test"]
        with torch.no_grad():
            apex_f = encode_images(bb.model, bb.preprocess, te.frames[np.arange(len(te.labels)), te.apex])
            zs_pred = {k: zero_shot_predict(apex_f, encode_texts(bb.model, bb.tokenizer,
                                                                 peclip.class_texts(k, EXPRESSIONS))).numpy()
                       for k in ("au", "names")}
        zs = pd.DataFrame({k: dict(zip(("UAR", "WAR"), uar_war(p, te.labels, len(EXPRESSIONS))))
                           for k, p in zs_pred.items()}).T
        rng = np.random.default_rng(s.seed)
        boot = []
        for _ in range(1000):
            i = rng.integers(len(te.labels), size=len(te.labels))
            boot.append(uar_war(zs_pred["au"][i], te.labels[i], 7)[0] - uar_war(zs_pred["names"][i], te.labels[i], 7)[0])
        lo, hi = np.percentile(boot, [2.5, 97.5])
        r.log("apex_zero_shot_uar[au]", zs.loc["au", "UAR"])
        r.log("apex_zero_shot_uar[names]", zs.loc["names", "UAR"])
        r.log("apex_zero_shot_uar_gain_ci_low", lo)
        r.text("pe_apex_au", f"{zs.loc['au', 'UAR']:.1f}%")
        r.text("pe_apex_names", f"{zs.loc['names', 'UAR']:.1f}%")
        r.text("pe_apex_ci", f"[{lo:+.1f}, {hi:+.1f}]")
        r.add_table("apex_zero_shot", zs.set_axis(["AU descriptions", "class names"]).rename_axis("class texts"))
    else:
        for k in ("pe_apex_au", "pe_apex_names", "pe_apex_ci"):
            r.text(k, "not run (generated clips only)")

    # the official GRU runs over the whole batch: does a clip's prediction depend on the other clips?
    if "PE-CLIP" in first.index:
        model, data0 = first.loc["PE-CLIP", "model"], folds[first_fold]
        n = min(len(y_test), 300)
        in_order, shuffled = np.arange(n), np.random.default_rng(0).permutation(n)
        leak = []
        for name, flag in (("per video (ours)", False), ("whole batch (official)", True)):
            _set_leak(model, flag)
            a, b = logits_in_order(model, data0["test"], in_order), logits_in_order(model, data0["test"], shuffled)
            leak.append({"GRU": name, "predictions changed (%)": 100 * (a.argmax(1) != b.argmax(1)).float().mean().item(),
                         "largest logit change": (a - b).abs().max().item()})
        _set_leak(model, False)
        leak = pd.DataFrame(leak).set_index("GRU")
        r.add_table("gru_leak", leak)
        r.text("pe_leak_official", f"{leak.loc['whole batch (official)', 'predictions changed (%)']:.1f}%")
        r.text("pe_leak_logit", f"{leak.loc['whole batch (official)', 'largest logit change']:.2f}")
        r.text("pe_leak_ours", f"{leak.loc['per video (ours)', 'predictions changed (%)']:.1f}%")
        r.text("pe_leak_logit_ours", f"{leak.loc['per video (ours)', 'largest logit change']:.2g}")

    # against the paper (the frames need a licence: ours only when this run used a DFER dataset)
    pub = PUBLISHED.set_index(["method", "dataset"])
    mine = s.dataset != "clips" and "PE-CLIP" in summary.index
    for metric in ("UAR", "WAR"):
        pub[f"ours {metric}"] = [summary.loc["PE-CLIP", metric] if mine and m == "PE-CLIP" and d == s.dataset
                                 else np.nan for m, d in pub.index]
    r.add_table("published", pub[["UAR", "WAR", "ours UAR", "ours WAR", "source"]])
    for d in ("dfew", "ferv39k", "afew"):
        for metric in ("UAR", "WAR"):
            ours_v = pub.loc[("PE-CLIP", d), f"ours {metric}"]
            r.record.reproduce(f"PE-CLIP {d} {metric} (%)", pub.loc[("PE-CLIP", d), metric], README,
                               None if pd.isna(ours_v) else float(ours_v), licence=True)
