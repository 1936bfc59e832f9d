"""The BATCLIP chapter as code: online test-time adaptation of both towers' LayerNorms against zero-shot, Tent, TPT
and its own ablations, on 15 corruptions; trainable counts, spread over stream orders, other datasets, a severity
sweep, class alignment before and after, time per batch, and the paper's main table next to ours.

    result = run(setup("ci"))            # or setup("paper", datasets=["cifar10-c"], n_images=2000)
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..bench import count_parameters, time_per_step
from ..data import microworld
from ..data.corruptions import CORRUPTIONS
from ..data.streams import GeneratedC, ReleasedC
from ..eval import class_alignment
from ..methods.batclip import CI_SETUPS, PAPER_SETUPS
from ..methods.registry import build_method
from ..methods.tta import corruption_benchmark
from ..models import load_backbone, load_clip
from ..profiles import get_profile
from ..transforms import preprocess_batch
from . import batclip_paper, core

NAME = "04_batclip"


@dataclass
class BenchSetup:
    dataset: str
    source: object          # a clipadapt.data.streams source
    batch_size: int
    optim: dict             # optimizer, lr, weight_decay for every adapting method
    precision: str          # forward-pass precision of the adapting methods
    tpt_images: int         # TPT runs on the first tpt_images of each stream (it adapts per image: slow)


def bench_setup(profile: str, dataset: str, n_images: int | None = None, data_root=None, seed: int = 0) -> BenchSetup:
    """The BATCLIP chapter's source and hyper-parameters for `dataset` on `profile` (ci or paper)."""
    prof = get_profile(profile)
    table = CI_SETUPS if prof.name == "ci" else PAPER_SETUPS
    if dataset not in table:
        raise ValueError(f"dataset {dataset!r} is not part of the {prof.name} profile of this chapter; choose from "
                         f"{', '.join(table)}")
    cfg = dict(table[dataset])
    batch_size = cfg.pop("batch_size")
    if prof.name == "ci":
        n = n_images or 1000
        base = (microworld.heldout_shapes(n, seed=microworld.HELDOUT_SEED + 40 + seed) if dataset == "shapes"
                else microworld.fashion_test(n))
        return BenchSetup(dataset, GeneratedC(base), batch_size, cfg, "fp32", tpt_images=min(50, n))
    # paper: the official code runs the forward pass under fp16 autocast with a GradScaler; bf16 needs no scaler
    return BenchSetup(dataset, ReleasedC(dataset, data_root, n_images), batch_size, cfg, "bf16",
                      tpt_images=min(1000, n_images or 10**9))


@dataclass(frozen=True)
class Setup:
    profile: str = "ci"
    seed: int = 0
    n_seeds: int = 3                  # stream orders for the spread of the main comparison
    datasets: tuple[str, ...] = ("shapes", "fashion-mnist")   # the first is the main one
    n_images: int | None = None       # images per corruption stream (None: ci 1,000, paper the whole release)
    severity: int = 5
    sweep_severities: tuple[int, ...] = (1, 3, 5)
    model: str = "ViT-B-16"           # paper: open_clip name and pretrained tag
    pretrained: str = "openai"
    data_root: str | None = None      # paper: the folder holding CIFAR-10-C/, CIFAR-100-C/, ImageNet-C/


SETUPS = {"ci": Setup(),
          "paper": Setup(profile="paper", n_seeds=1, datasets=("cifar10-c", "cifar100-c", "imagenet-c"))}


def setup(profile: str = "ci", **overrides) -> Setup:
    return core.make_setup(SETUPS, profile, **overrides)


def run(s: Setup) -> core.Result:
    return core.run(NAME, compute, s)


def _tuned(bench, **kw) -> dict:
    """The config of an adapting method on a benchmark set-up: its optimizer and precision, plus kw."""
    return {"precision": bench.precision, **bench.optim, **kw}


def _main_rows(bench) -> tuple[dict, dict, dict]:
    core_rows = {"zero-shot": {"method": "source"}, "Tent (image LN)": {"method": "tent", **_tuned(bench)},
                 "BATCLIP": {"method": "batclip", **_tuned(bench)}}
    ablations = {
        "BATCLIP, image LN only": {"method": "batclip", **_tuned(bench, towers="image")},
        "BATCLIP, text LN only": {"method": "batclip", **_tuned(bench, towers="text")},
        "BATCLIP without L_pm": {"method": "batclip", **_tuned(bench, use_pm=False)},
        "BATCLIP without L_sp": {"method": "batclip", **_tuned(bench, use_sp=False)},
    }
    tpt = {"zero-shot, TPT's images": {"method": "source", "n": bench.tpt_images},
           "TPT": {"method": "tpt", "n": bench.tpt_images, "precision": bench.precision}}
    return core_rows, ablations, tpt


def compute(s: Setup, r: core.Result) -> None:
    benches = {d: bench_setup(s.profile, d, s.n_images, s.data_root, s.seed) for d in s.datasets}
    main = benches[s.datasets[0]]
    backbone = lambda: load_backbone(s.profile, (s.model, s.pretrained))   # noqa: E731
    run_model = "clipadapt-tiny" if s.profile == "ci" else f"{s.model}/{s.pretrained}"
    r.add_table("setup", pd.DataFrame([{
        "dataset": b.source.name, "images per stream": len(b.source), "batch": b.batch_size, **b.optim,
        "precision": b.precision, "TPT images per stream": b.tpt_images} for b in benches.values()]), index=False)
    r.text("bat_run_model", run_model)
    r.text("bat_main_source", main.source.name)
    r.text("bat_severity", s.severity)
    r.text("bat_n_images", f"{len(main.source):,}")
    r.text("bat_batch_size", main.batch_size)
    r.text("bat_tpt_images", main.tpt_images)
    r.text("bat_n_seeds", s.n_seeds)

    # what is trained: this run's backbone and ViT-B/16 (built without weights)
    rows = []
    for label, loaded in [(f"{run_model} (this run)", backbone()), ("ViT-B-16 (built without weights)",
                                                                     load_clip("ViT-B-16"))]:
        for method in ("batclip", "tpt"):
            c = count_parameters(build_method(method, loaded.model, loaded.tokenizer, main.source.classes))
            rows.append({"backbone": label, "method": method, "trainable": c.trainable, "total": c.total,
                         "trainable (%)": 100 * c.fraction})
    b16 = next(x for x in rows if x["backbone"].startswith("ViT-B-16") and x["method"] == "batclip")
    r.add_table("trainable", pd.DataFrame(rows), index=False)
    r.text("bat_trainable_run", f"{rows[0]['trainable']:,}")
    r.text("bat_trainable_b16", f"{b16['trainable']:,}")
    r.text("bat_total_b16", f"{b16['total']:,}")
    r.text("bat_trainable_b16_pct", b16["trainable (%)"])

    # the 15 corruptions: the main rows over n_seeds stream orders, the ablations and TPT on the first
    core_rows, ablations, tpt_rows = _main_rows(main)
    seeds = core.run_seeds(s)
    res = pd.concat([corruption_benchmark(backbone, main.source, {**core_rows, **(ablations | tpt_rows
                                                                                if k == seeds[0] else {})},
                                          CORRUPTIONS, (s.severity,), main.batch_size, k) for k in seeds],
                    ignore_index=True)
    first = res[res.seed == seeds[0]]
    table = first.pivot(index="method", columns="corruption", values="accuracy")[list(CORRUPTIONS)]
    table = table.loc[list(core_rows) + list(ablations)]
    table["mean"] = table.mean(axis=1)
    means = table["mean"]
    r.log("mean_acc_zero_shot", means["zero-shot"], glue_as="bat_zs_mean")
    r.log("mean_acc_tent", means["Tent (image LN)"], glue_as="bat_tent_mean")
    r.log("mean_acc_batclip", means["BATCLIP"], glue_as="bat_mean")
    for k in table.index:
        r.log(f"mean_acc[{k}]", means[k])
    gains = table.loc["BATCLIP"].drop("mean") - table.loc["zero-shot"].drop("mean")
    r.text("bat_top_gains", ", ".join(f"{c} ({g:+.0f})" for c, g in gains.nlargest(4).items()))
    r.log("worst_gain_batclip", gains.min(), glue_as="bat_worst_gain")
    r.text("bat_worst_corruption", gains.idxmin())
    r.text("bat_worst_verdict_en", "so adaptation can also cost accuracy" if gains.min() < 0
           else "so every corruption gained")
    r.text("bat_worst_verdict_ja", "適応で精度が下がることもあります" if gains.min() < 0
           else "どの劣化でも精度が上がりました")
    r.add_table("per_corruption", table)

    # how much is noise: per stream order
    per_seed = res[res.method.isin(list(core_rows))].groupby(["seed", "method"])["accuracy"].mean().unstack()
    per_seed = per_seed[list(core_rows)]
    per_seed["BATCLIP - zero-shot"] = per_seed["BATCLIP"] - per_seed["zero-shot"]
    per_seed["BATCLIP - Tent"] = per_seed["BATCLIP"] - per_seed["Tent (image LN)"]
    g = r.claim("bat_gain", "BATCLIP beats zero-shot", "BATCLIP がゼロショットを上回る", per_seed["BATCLIP - zero-shot"])
    gt = r.claim("bat_gain_tent", "BATCLIP beats Tent", "BATCLIP が Tent を上回る", per_seed["BATCLIP - Tent"])
    r.log("gain_vs_zero_shot_min_over_seeds", min(g.per_seed))
    r.log("gain_vs_tent_min_over_seeds", min(gt.per_seed))
    r.add_table("seeds", per_seed)

    # TPT on its subset of each stream
    tpt = first[first.method.isin(list(tpt_rows))].pivot(index="method", columns="corruption", values="accuracy")
    tpt = tpt[list(CORRUPTIONS)].loc[list(tpt_rows)]
    tpt["mean"] = tpt.mean(axis=1)
    r.log("mean_acc_tpt_subset", tpt.loc["TPT", "mean"], glue_as="bat_tpt_mean")
    r.log("mean_acc_zero_shot_tpt_subset", tpt.loc["zero-shot, TPT's images", "mean"], glue_as="bat_tpt_zs_mean")
    r.add_table("tpt_subset", tpt)

    # the main rows on every dataset of the set-up
    across = {main.source.name: first[first.method.isin(list(core_rows))].groupby("method")["accuracy"].mean()}
    for d in s.datasets[1:]:
        b = benches[d]
        rows_d = _main_rows(b)[0]
        out = corruption_benchmark(backbone, b.source, rows_d, CORRUPTIONS, (s.severity,), b.batch_size, seeds[0])
        across[b.source.name] = out.groupby("method")["accuracy"].mean()
    across = pd.DataFrame(across).T[list(core_rows)]
    across["BATCLIP - zero-shot"] = across["BATCLIP"] - across["zero-shot"]
    for name, row in across.iterrows():
        r.log(f"mean_acc_batclip[{name}]", row["BATCLIP"])
        r.log(f"mean_acc_zero_shot[{name}]", row["zero-shot"])
    r.add_table("datasets", across.rename_axis("dataset"))

    # severity sweep on a quarter of the main stream
    sweep = corruption_benchmark(backbone, main.source.head(len(main.source) // 4), core_rows, CORRUPTIONS,
                                 tuple(s.sweep_severities), main.batch_size, seeds[0])
    curve = sweep.groupby(["method", "severity"])["accuracy"].mean().unstack(0)[list(core_rows)]
    r.add_table("severity_sweep", curve)

    # class alignment before and after BATCLIP on the snow stream
    x_snow, y_snow = main.source.stream("snow", s.severity, seeds[0])
    bb, classes = backbone(), main.source.classes
    before = class_alignment(bb.model, bb.tokenizer, bb.preprocess, x_snow, y_snow, classes)
    m = build_method("batclip", bb.model, bb.tokenizer, classes, **_tuned(main))
    m.run_stream(x_snow, y_snow, main.batch_size, bb.preprocess)
    after = class_alignment(m.model, bb.tokenizer, bb.preprocess, x_snow, y_snow, classes)
    r.add_table("alignment_snow", pd.DataFrame({"class": list(classes), "before": before, "after BATCLIP": after}),
                index=False)

    # time per batch, measured in this run
    xb = preprocess_batch(bb.preprocess, x_snow[:main.batch_size]).to(next(bb.model.parameters()).device)
    timings = {}
    for name in ("source", "tent", "batclip", "tpt"):
        b2 = backbone()
        kw = {"source": {}, "tpt": {"precision": main.precision}}.get(name, _tuned(main))
        meth = build_method(name, b2.model, b2.tokenizer, classes, **kw)
        slow = name == "tpt"
        timings[name] = time_per_step(lambda: meth(xb), warmup=1 if slow else 2, repeats=1 if slow else 7)["s_per_step"]
    r.log("time_ratio_batclip_vs_zero_shot", timings["batclip"] / timings["source"], glue_as="bat_time_ratio")
    r.log("time_ratio_tpt_vs_zero_shot", timings["tpt"] / timings["source"], glue_as="bat_tpt_ratio")
    r.add_table("seconds_per_batch", pd.DataFrame({"seconds per batch": timings,
                                                   "x zero-shot": {k: v / timings["source"]
                                                                   for k, v in timings.items()}}).rename_axis("method"))

    # against the paper: its main table (per corruption, severity 5, ViT-B/16); ours where this run used that data
    paper = batclip_paper.table()
    r.add_table("paper_table", paper.reset_index().assign(dataset=lambda d: d.dataset.map(batclip_paper.DATASETS)),
                index=False)
    ours_name = {"zero-shot": "zero-shot", "Tent": "Tent (image LN)", "BATCLIP": "BATCLIP"}
    rows = []
    for d, label in batclip_paper.DATASETS.items():
        ran = s.profile == "paper" and d in benches
        for m in batclip_paper.METHODS:
            ours = across.loc[benches[d].source.name, ours_name[m]] if ran and m in ours_name else None
            if ran and m == "TPT" and d == s.datasets[0]:
                ours = tpt.loc["TPT", "mean"]   # on the first tpt_images of each stream
            published = paper.loc[(d, m), "mean"]
            rows.append({"dataset": label, "method": m, "published mean (%)": published,
                         f"ours ({s.model}/{s.pretrained}, paper profile)":
                             f"{ours:.2f}" if ours is not None else ("not run" if m in ours_name or m == "TPT"
                                                                      else "not in this book"),
                         "ours - published": f"{ours - published:+.2f}" if ours is not None else ""})
            if m in ours_name:
                r.record.reproduce(f"{label}: {m} mean accuracy over 15 corruptions, severity 5 (%)", published,
                                   batclip_paper.SOURCE, round(float(ours), 2) if ours is not None else None)
    r.add_table("published_vs_ours", pd.DataFrame(rows), index=False)
