"""The arena as code: every registered method on one backbone and three few-shot tasks (one per VTAB group), its
accuracy against trainable parameters and training memory (Pareto fronts), per group, with Tent and BATCLIP on top on
corrupted streams, on face clips, the efficiency ratios the papers rest on, and a pick for few labels.

    result = run(setup("ci"))            # or setup("paper", methods=["zero-shot", "LoRA"])
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import arena as lib
from ..arena.plots import frontier_plot, pareto  # noqa: F401 (the notebook draws with frontier_plot)
from ..data import clips, vtab
from ..data.streams import ReleasedC
from ..engine import TrainSpec
from ..methods import batclip
from ..models.loader import load_backbone
from . import core

NAME = "06_arena"


@dataclass(frozen=True)
class Setup:
    profile: str = "ci"
    seed: int = 0
    n_seeds: int = 3                 # seeds (each draws its own few-shot sample)
    tasks: tuple[str, ...] = ("digits", "noisy-fashion", "orientation")   # one per VTAB group (paper: VTAB-1k tasks
                                                                          # with class names in clip_benchmark)
    methods: tuple[str, ...] = tuple(lib.ARENA)
    shots: int = 16                  # labelled images per class
    epochs: int = 20
    lr: float = 3e-3
    n_test: int = 300                # ci: test images per task
    robust_task: str = "fashion-mnist"   # the robustness track's task (paper: VTAB-1k cifar, tested on CIFAR-100-C)
    corruptions: tuple[str, ...] = ("gaussian_noise", "contrast")
    robust_images: int = 400         # images per corrupted stream
    face_clips: bool = True          # the face-clip track (paper: no, DFEW's frames need a licence)
    bench_repeats: int = 3           # timing repeats of the benchmark (median)
    data_root: str | None = None     # paper: folder with vtab-1k/ (None: $CLIPADAPT_DATA)
    num_workers: int = 0             # image-reading workers


SETUPS = {"ci": Setup(),
          "paper": Setup(profile="paper", tasks=("svhn", "eurosat", "clevr_count"), epochs=50, lr=1e-3,
                         robust_task="cifar", robust_images=10_000, face_clips=False, num_workers=8)}


def setup(profile: str = "ci", **overrides) -> Setup:
    return core.make_setup(SETUPS, profile, **overrides)


def run(s: Setup) -> core.Result:
    return core.run(NAME, compute, s)


def tasks(s: Setup) -> list:
    if s.profile == "ci":
        return [vtab.load_task(t, n_test=s.n_test) for t in s.tasks]
    return [vtab.load_vtab1k(t, s.data_root) for t in s.tasks]


def _fit(s: Setup, epochs: int, batch_size: int, warmup: int) -> TrainSpec:
    return TrainSpec(epochs=epochs, lr=s.lr, warmup=warmup / epochs, batch_size=batch_size, eval_every=epochs,
                     eval_last=1, num_workers=s.num_workers)


def compute(s: Setup, r: core.Result) -> None:
    methods, ts = list(s.methods), tasks(s)
    seeds = core.run_seeds(s)
    cfg = lib.ArenaConfig(shots=s.shots, fit=_fit(s, s.epochs, 32, max(1, s.epochs // 10)))
    r.add_table("tasks", pd.DataFrame([{"group": t.group, "task": t.name, "classes": len(t.classes),
                                        "labelled (few-shot)": s.shots * len(t.classes), "test": len(t.y_test),
                                        "class names": ", ".join(t.classes[:4]) + ", ..."} for t in ts]), index=False)
    for k, v in {"arena_shots": s.shots, "arena_n_tasks": len(ts), "arena_n_seeds": s.n_seeds, "arena_epochs": s.epochs,
                 "arena_n_methods": len(methods), "arena_lr": f"{s.lr:g}",
                 "arena_full_lr": f"{s.lr * cfg.full_lr_scale:g}"}.items():
        r.text(k, v)
    r.add_table("contestants", pd.DataFrame([{"method": m.name, "family": m.family, "explained in": m.chapter,
                                              "backbone": m.backbone} for m in map(lib.get_method, methods)]),
                index=False)

    # every method x task x seed, and the board
    df = lib.run(methods, ts, seeds, cfg, s.profile, store=r.jobs, key=("tasks",))
    r.add_table("runs", df, index=False)
    per_method = df.groupby(["method", "seed"])["value"].mean().groupby("method").agg(["mean", "std"])
    costs = df.groupby("method")[["trainable", "total", "stored", "train_mb", "s_per_step", "adapt_s"]].mean()
    board = per_method.join(costs).loc[methods]
    board["family"] = [lib.get_method(m).family for m in board.index]
    board["backbone"] = [lib.get_method(m).backbone for m in board.index]
    board["trainable share"] = board["trainable"] / board["total"]
    full_mb = {b: board.loc[ref, "train_mb"] for b, ref in lib.FULL.items() if ref in board.index}
    board["memory / full FT"] = [board.loc[m, "train_mb"] / full_mb[b] if b in full_mb else np.nan
                                 for m, b in zip(board.index, board["backbone"])]
    r.add_table("board", board.rename_axis("method"))
    for m in board.index:
        r.log(f"mean_acc[{m}]", board.loc[m, "mean"])
    trained = board[board["trainable"] > 0]
    fronts = {"params": pareto(trained["trainable"], trained["mean"]),
              "memory": pareto(trained["train_mb"], trained["mean"])}
    r.record.tables["pareto_params"], r.record.tables["pareto_memory"] = fronts["params"], fronts["memory"]
    on_front = [m for m in fronts["memory"] if m in fronts["params"]]
    r.record.tables["both_frontiers"] = on_front
    r.text("arena_front_text", f"{len(on_front)} of the {len(trained)} trained methods are on both frontiers "
           f"({', '.join(on_front)}): on each of the two plots, no other method is at once more accurate and cheaper.")
    r.text("arena_front_text_ja", f"学習する {len(trained)} 手法のうち {len(on_front)} 手法({', '.join(on_front)})が"
           "両方のパレートフロントに乗っています。2枚の図のどちらでも、これより精度が高く、しかも安い手法はありません。")

    # per task group
    r.add_table("per_group", lib.summary(df), index=False)

    # robustness: Tent and BATCLIP on top of each adapted model, on corrupted streams
    if s.profile == "ci":
        rtask = vtab.load_task(s.robust_task, n_test=s.robust_images)
        rsource, optim = None, batclip.CI_SETUPS["fashion-mnist"]
    else:
        rtask = vtab.load_vtab1k(s.robust_task, s.data_root)
        rsource, optim = ReleasedC("cifar100-c", s.data_root, s.robust_images), batclip.PAPER_SETUPS["cifar100-c"]
    rcfg = lib.RobustnessConfig(corruptions=tuple(s.corruptions), n_images=s.robust_images, **optim)
    rob = lib.robustness(methods, rtask, rsource, seeds, cfg, rcfg, s.profile, store=r.jobs)   # the contrastive head is left out
    r.add_table("robustness", rob, index=False)
    for k, v in {"arena_robust_task": rtask.name, "arena_n_corruptions": len(rcfg.corruptions),
                 "arena_severity": rcfg.severity, "arena_stream_images": int(rob["images"].iloc[0]),
                 "arena_tta_batch": rcfg.batch_size}.items():
        r.text(k, v)
    per_seed = rob.groupby(["method", "test_time", "seed"])["accuracy"].mean().unstack("test_time")
    clean = rob.groupby("method")["clean"].mean()
    order = [m for m in methods if m in clean.index]
    mean_acc = per_seed.groupby("method").mean().loc[order, list(lib.TEST_TIME)]
    mean_acc.insert(0, "clean test", clean.loc[order])
    r.add_table("robust_mean", mean_acc.rename_axis("method"))
    gains = pd.DataFrame({k: per_seed[k] - per_seed["none"] for k in lib.TEST_TIME[1:]})
    g = gains.groupby("method").agg(["mean", "std"]).loc[order]
    helped = {k: [m for m in order if g.loc[m, (k, "mean")] > g.loc[m, (k, "std")]] for k in lib.TEST_TIME[1:]}
    hurt = {k: [m for m in order if g.loc[m, (k, "mean")] < -g.loc[m, (k, "std")]] for k in lib.TEST_TIME[1:]}
    r.add_table("robustness_gains", pd.DataFrame([{"method": m, **{f"{k} gain {st}": g.loc[m, (k, st)]
                                                                  for k, st in g.columns}} for m in order]), index=False)
    for k in lib.TEST_TIME[1:]:
        r.log(f"robust_helped[{k}]", len(helped[k]))
        r.log(f"robust_hurt[{k}]", len(hurt[k]))
    if "zero-shot" in order:
        zs = r.log("robust_zero_shot_batclip_gain", g.loc["zero-shot", ("BATCLIP", "mean")], glue_as="arena_rob_zs")
        zs_en, zs_ja = f"BATCLIP changed accuracy by {zs:+.1f} points", f"BATCLIP で精度が {zs:+.1f} ポイント変わりました"
    else:
        zs_en, zs_ja = "BATCLIP was not measured (zero-shot was not run)", "BATCLIP は測っていません(ゼロショットを実行していません)"
    en = lambda ms: ", ".join(ms) if ms else "none"   # noqa: E731
    ja = lambda ms: "、".join(ms) if ms else "なし"    # noqa: E731
    hb, lb, ht, lt = helped["BATCLIP"], hurt["BATCLIP"], helped["Tent"], hurt["Tent"]
    r.text("arena_robust_text", f"By more than one standard deviation, BATCLIP on top raised accuracy for {len(hb)} of "
           f"the {len(order)} methods ({en(hb)}) and lowered it for {len(lb)} ({en(lb)}); Tent raised it for {len(ht)} "
           f"({en(ht)}) and lowered it for {len(lt)} ({en(lt)}). On the zero-shot model, the BATCLIP chapter's "
           f"setting, {zs_en}.")
    r.text("arena_robust_text_ja", f"標準偏差1つ分を超えて、BATCLIP を重ねると {len(order)} 手法のうち {len(hb)} 手法"
           f"({ja(hb)})で精度が上がり、{len(lb)} 手法({ja(lb)})で下がりました。Tent では {len(ht)} 手法({ja(ht)})で"
           f"上がり、{len(lt)} 手法({ja(lt)})で下がりました。BATCLIP の章の設定であるゼロショットのモデルでは、"
           f"{zs_ja}。")

    # face clips: every method on the PE-CLIP chapter's generated clips
    clip_cfg = lib.ArenaConfig(shots=s.shots, fit=_fit(s, 10, 16, 1))
    r.text("arena_clip_epochs", clip_cfg.fit.epochs)
    r.text("arena_clip_batch", clip_cfg.fit.batch_size)
    if s.face_clips:
        ctask = clips.as_task(n_train=400, n_test=200, frames=8, seed=s.seed)
        cdf = lib.run(methods, [ctask], seeds, clip_cfg, s.profile, store=r.jobs, key=("clip",))
        r.add_table("face_clips", cdf, index=False)
        cb = cdf.groupby(["method", "seed"])["value"].mean().groupby("method").agg(["mean", "std"]).loc[methods]
        cb["backbone"] = [lib.get_method(m).backbone for m in cb.index]
        r.add_table("clips_board", cb.rename_axis("method"))
        majority = 100 * np.bincount(ctask.y_test).max() / len(ctask.y_test)
        r.text("arena_clips_majority", majority)
        best_c = cb["mean"].idxmax()
        pe = "PE-CLIP adapters" if "PE-CLIP adapters" in cb.index else best_c
        rank = int((cb["mean"] > cb.loc[pe, "mean"]).sum()) + 1
        for m in cb.index:
            r.log(f"clips_acc[{m}]", cb.loc[m, "mean"])
        r.text("arena_clips_pe", f"{cb.loc[pe, 'mean']:.1f}%, rank {rank} of {len(cb)}")
        r.text("arena_clips_best", best_c)
        r.text("arena_clips_best_acc", f"{cb.loc[best_c, 'mean']:.1f}%")
        r.text("arena_clips_pe_ja", f"{cb.loc[pe, 'mean']:.1f}%({len(cb)} 手法中 {rank} 位)")
        r.text("arena_clips_text", f"Most accurate on the clips: {best_c} ({cb.loc[best_c, 'mean']:.1f}% ± "
               f"{cb.loc[best_c, 'std']:.1f}); {pe} {cb.loc[pe, 'mean']:.1f}%, rank {rank} of {len(cb)}; always "
               f"answering the most frequent expression scores {majority:.1f}%.")
        r.text("arena_clips_text_ja", f"クリップで最も精度が高かったのは {best_c}({cb.loc[best_c, 'mean']:.1f}% ± "
               f"{cb.loc[best_c, 'std']:.1f})で、{pe} は {cb.loc[pe, 'mean']:.1f}%({len(cb)} 手法中 {rank} 位)"
               f"でした。常に最も多い表情を答えると {majority:.1f}% になります。")
    else:
        r.text("arena_clips_pe", "not run on this profile")
        r.text("arena_clips_best", "PE-CLIP adapters (the paper's choice; not measured here)")
        r.text("arena_clips_best_acc", "not run on this profile")
        r.text("arena_clips_pe_ja", "このプロファイルでは未実行")
        r.text("arena_clips_text", "Not run on this profile: DFEW's frames need a licence (see the PE-CLIP chapter).")
        r.text("arena_clips_text_ja", "このプロファイルでは実行していません。DFEW のフレームには利用許諾が必要です"
               "(PE-CLIP の章を参照)。")

    # the efficiency ratios, measured in this one process (the ci suite's digits on both profiles: timings depend
    # on sizes, not on the images)
    bench = lib.benchmark(methods, s.profile, task="digits", repeats=s.bench_repeats, seed=s.seed, cfg=cfg,
                          show_progress=False)
    r.add_table("bench", pd.DataFrame(bench["ratios"]), index=False)
    r.record.tables["bench_raw"] = bench["raw"]
    ratio = pd.DataFrame(bench["ratios"]).set_index("ratio")["value"]
    r.text("arena_bench_task", bench["task"])
    r.text("arena_bench_repeats", s.bench_repeats)
    r.log("batclip_vs_zero_shot_per_batch", ratio["BATCLIP s per batch / zero-shot s per batch"],
          glue_as="arena_batclip_vs_zs")
    r.log("tpt_vs_batclip_per_image", ratio["TPT s per image / BATCLIP s per image"], glue_as="arena_tpt_vs_batclip")
    r.log("sensitivity_vs_epoch", ratio["SPT sensitivity pass s / one training epoch s"], glue_as="arena_sens_vs_epoch")
    with_ckpt = ratio[ratio.index.str.startswith("training memory with checkpointing")]
    r.text("arena_ckpt_max_mem", with_ckpt.max())
    r.text("arena_ckpt_max_method", with_ckpt.idxmax().rsplit(": ", 1)[1])

    # the pick for few labels: within one seed-standard-deviation of the most accurate method, the least memory
    best_m = board["mean"].idxmax()
    pick_m, near = lib.pick(board, trained.index)
    for key, m in (("best", best_m), ("pick", pick_m)):
        r.text(f"arena_{key}", m)
        r.log(f"{key}_acc", board.loc[m, "mean"], glue_as=f"arena_{key}_acc")
        r.text(f"arena_{key}_trainable", f"{board.loc[m, 'trainable']:,.0f}")
    r.text("arena_best_std", board.loc[best_m, "std"])
    r.log("pick_memory_vs_full", board.loc[pick_m, "memory / full FT"], glue_as="arena_pick_mem")
    r.text("arena_pick_chapter", lib.get_method(pick_m).chapter)
    r.record.tables["pick"] = {"best": best_m, "within_one_std": near, "pick": pick_m}
    for key, m in (("peclip", "PE-CLIP adapters"), ("vlpet", "VL-PET gated adapters"), ("head", "contrastive head")):
        if m in board.index:
            r.text(f"arena_{key}_acc", board.loc[m, "mean"])
            r.text(f"arena_{key}_mem", board.loc[m, "memory / full FT"])
            r.text(f"arena_{key}_trainable", f"{board.loc[m, 'trainable']:,.0f}")

    # what ci can tell: the text tower against the image tower, from zero-shot's start
    visual = load_backbone(s.profile).model.visual
    r.text("arena_n_blocks", len(visual.transformer.resblocks))
    r.text("arena_width", visual.conv1.out_channels)
    text_m = board[(board["backbone"] == "CLIP") & (board["trainable"] > 0)
                   & (board["family"] != "embeddings")]["mean"].idxmax()
    image_m = board[board["backbone"] == "image tower"]["mean"].idxmax()
    a, b = board.loc[text_m, "mean"], board.loc[image_m, "mean"]
    zs_task = df[df["method"] == "zero-shot"].groupby("task")["value"].mean()
    per_task = ", ".join(f"{t.name} {zs_task[t.name]:.1f}% (chance {100 / len(t.classes):.1f}%)" for t in ts)
    per_task_ja = "、".join(f"{t.name} {zs_task[t.name]:.1f}%(偶然の一致 {100 / len(t.classes):.1f}%)" for t in ts)
    r.text("arena_towers_text", f"The best method that classifies through the text tower, {text_m} ({a:.1f}%), ended "
           f"{'below' if a < b else 'above'} the best on the image tower, {image_m} ({b:.1f}%). Text-head methods "
           f"start from zero-shot, which here was {per_task}.")
    r.text("arena_towers_text_ja", f"テキストタワーを通して分類する手法で最良の {text_m}({a:.1f}%)は、画像タワーで最良の "
           f"{image_m}({b:.1f}%)を{'下回りました' if a < b else '上回りました'}。テキストのヘッドを使う手法はゼロショットから"
           f"出発しますが、ここでのゼロショットは {per_task_ja} でした。")
