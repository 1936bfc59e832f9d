"""`report.html` of an own-images run (`clipadapt.adapt`): one self-contained file (figures embedded as PNG) a
manager can open or mail, in English and Japanese with a language switch. It shows accuracy against trainable
parameters and against training memory, the table of every method, the pick by the arena's rule and why, the pick's
per-class accuracy and confusion matrix, the files skipped, and what the run cannot tell."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import binomtest

from .arena import get_method
from .arena.plots import frontier_plot, pareto
from .plotting import confusion_heatmap, setup
from .utils import atomic_write

CSS = """body{font-family:system-ui,'Hiragino Sans','Noto Sans JP','IPAexGothic',sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.6}table{border-collapse:collapse;font-size:90%}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}
img{max-width:100%}.pick{background:#eef6ee;border-left:4px solid #3a3;padding:.6em 1em}
nav button{margin-right:.5em}[lang=ja].hidden,[lang=en].hidden{display:none}"""
SWITCH = """function show(l){document.querySelectorAll('main > section[lang]').forEach(function(s){
s.classList.toggle('hidden', s.lang !== l)});document.documentElement.lang = l;}"""


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return '<img alt="figure" src="data:image/png;base64,' + base64.b64encode(buf.getvalue()).decode() + '">'


def board_of(res: dict) -> pd.DataFrame:
    """The per-method summary of a results record, indexed by method, with each row's backbone."""
    board = pd.DataFrame(res["tables"]["summary"]).set_index("method").astype({"mean": float})
    board["std"] = board["std"].astype(float)
    board["train_mb"] = board["train_mb"].astype(float)
    board["backbone"] = [get_method(m).backbone for m in board.index]
    return board.sort_values("mean", ascending=False)


def figures(res: dict) -> dict[str, str]:
    """The report's figures as <img> tags: the two fronts, and the pick's confusion matrix and per-class accuracy."""
    setup()   # figures without pyplot: a notebook's own backend stays as it is
    board = board_of(res)
    trained = board[board["trainable"] > 0]
    out = {}
    if len(trained):
        fig = Figure(figsize=(13, 4.6))
        axes = fig.subplots(1, 2)
        frontier_plot(board, pareto(trained["trainable"], trained["mean"]), "trainable",
                      "trainable parameters / 学習するパラメータ数 (log)", "accuracy vs parameters / 精度とパラメータ数",
                      axes[0])
        frontier_plot(board, pareto(trained["train_mb"], trained["mean"]), "train_mb",
                      "MiB for one training step / 学習1ステップのメモリ (log)", "accuracy vs memory / 精度とメモリ",
                      axes[1])
        axes[0].get_legend().remove()
        fig.tight_layout()
        out["fronts"] = _png(fig)
    pick = res["tables"].get("pick", {}).get("pick")
    test = res["tables"]["test"]
    if pick in test["predictions"]:
        classes, y = res["info"]["classes"], np.array(test["labels"])
        pred = np.array(test["predictions"][pick]["pred"])
        cm = pd.crosstab(pd.Categorical(y, range(len(classes))), pd.Categorical(pred, range(len(classes))),
                         dropna=False).to_numpy().astype(float)
        fig = Figure(figsize=(12, 4.4))
        axes = fig.subplots(1, 2)
        confusion_heatmap(cm / np.maximum(cm.sum(1, keepdims=True), 1), classes, axes[0],
                          f"{pick}, best seed: confusion (%) / 最良シードの混同行列 (%)")
        per_class = 100 * np.diag(cm) / np.maximum(cm.sum(1), 1)
        axes[1].barh(classes, per_class, color="#4a8")
        axes[1].set(xlim=(0, 100), xlabel="accuracy (%) / 正解率 (%)", title=f"{pick}, best seed: per class / 最良シードのクラス別")
        axes[1].invert_yaxis()
        fig.tight_layout()
        out["pick"] = _png(fig)
    return out


def facts(res: dict) -> dict:
    """The numbers the prose states, computed from the record."""
    board = board_of(res)
    pick = res["tables"].get("pick", {})
    test = res["tables"]["test"]
    n = len(test["labels"])
    f = {"n_test": n, "n_train": res["info"]["train_images"], "classes": len(res["info"]["classes"]),
         "seeds": len(res["info"]["seeds"]), "shots": res["info"]["shots"], "backbone": res["info"]["backbone"],
         "skipped": len(res["tables"]["skipped"]), "chance": 100 / len(res["info"]["classes"])}
    if pick:
        p, b = pick["pick"], pick["best"]
        f.update(pick=p, best=b, pick_acc=board.loc[p, "mean"], best_acc=board.loc[b, "mean"],
                 best_std=board.loc[b, "std"], pick_mb=board.loc[p, "train_mb"], near=len(pick["within_one_std"]),
                 pick_params=board.loc[p, "trainable"], unsaved=", ".join(pick.get("not_candidates", [])))
        full = [m for m in board.index if get_method(m).family == "full"]
        f["full_mb"] = board.loc[full, "train_mb"].min() if full else None
        k = int(round(f["pick_acc"] / 100 * n))   # the mean over seeds, as a count of the test images
        ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
        f.update(ci_low=100 * ci.low, ci_high=100 * ci.high)
    if "zero-shot" in board.index:
        f["zero_shot"] = board.loc["zero-shot", "mean"]
    return f


def table_html(res: dict) -> str:
    """The per-method table (accuracy mean ± std, trainable parameters, memory, seconds) as HTML."""
    board = board_of(res)
    t = pd.DataFrame({
        "accuracy / 正解率 (%)": [f"{m:.1f}" + ("" if s != s else f" ± {s:.1f}") for m, s in zip(board["mean"],
                                                                                            board["std"])],
        "trainable / 学習パラメータ": board["trainable"].map("{:,.0f}".format),
        "memory / メモリ (MiB)": board["train_mb"].map(lambda v: "-" if v != v else f"{v:,.0f}"),
        "s per step / 秒/ステップ": board["s_per_step"].astype(float).map(lambda v: "-" if v != v else f"{v:.3f}"),
        "seconds / 所要秒": board["adapt_s"].astype(float).map("{:.0f}".format)}, index=board.index)
    return t.rename_axis("method / 手法").reset_index().to_html(index=False, escape=True)


def _prose(f: dict, lang: str) -> str:
    e = html.escape
    if lang == "en":
        head = (f"<p>{f['classes']} classes, {f['n_train']} images to learn from ({f['shots']} per class drawn anew "
                f"for each of {f['seeds']} seeds) and {f['n_test']} held-out test images; backbone "
                f"<code>{e(f['backbone'])}</code>. {f['skipped']} files were skipped (listed below).</p>")
        pick = "" if "pick" not in f else (
            f"<p class='pick'><b>Pick: {e(f['pick'])}</b>, {f['pick_acc']:.1f}% mean accuracy. The most accurate "
            f"method is {e(f['best'])} ({f['best_acc']:.1f}%"
            + ("" if f["best_std"] != f["best_std"] else f" ± {f['best_std']:.1f} over seeds") + "); "
            f"{f['near']} of the methods are within one seed-standard-deviation of it, and of those the pick needs "
            + ("no training at all." if f["pick_mb"] != f["pick_mb"] else
               f"the least memory for a training step ({f['pick_mb']:,.0f} MiB"
               + ("" if not f.get("full_mb") else f" against {f['full_mb']:,.0f} MiB for full fine-tuning") + ").")
            + ("" if not f["unsaved"] else f" Compared but not candidates, since their trained model is not saved for "
               f"<code>clipadapt predict</code>: {e(f['unsaved'])}.") + "</p>")
        limits = ["<h2>What this run cannot tell</h2><ul>",
                  f"<li>It has {f['n_test']} test images: one image moves accuracy by {100 / f['n_test']:.1f} points"
                  + ("" if "ci_low" not in f else f", and the pick's 95% interval is {f['ci_low']:.0f}–"
                     f"{f['ci_high']:.0f}%") + ". Differences smaller than that are not findings.</li>",
                  "<li>The saved adapter and the figures of the pick are its best seed, chosen on these same test "
                  "images: their own score is optimistic. Plan with the mean over seeds in the table.</li>",
                  "<li>The test images come from the same folder as the training images. A new line, camera, "
                  "lighting or season can score lower; test on such images before relying on the pick.</li>",
                  "<li>Memory and time are one training step and one run on this machine with this backbone. A larger "
                  "backbone, another batch size or a GPU changes both, and can change the ranking.</li>"]
        if "zero_shot" in f:
            limits.append(
                f"<li>The zero-shot row ({f['zero_shot']:.1f}%, chance {f['chance']:.1f}%) scores the backbone on your "
                "class names alone, without training. It shows whether the backbone already links these words to "
                "these images. A score near or below chance means it does not (unknown names, or a backbone that "
                "never saw such images); it says nothing about how hard the images are, and it is not a floor for the "
                "trained methods.</li>")
        return head + pick + "".join(limits) + "</ul>"
    head = (f"<p>{f['classes']} クラス、学習に使う画像 {f['n_train']} 枚(シード {f['seeds']} 通りのそれぞれで、クラスごとに "
            f"{f['shots']} 枚を引き直します)と、評価用に取り分けたテスト画像 {f['n_test']} 枚です。バックボーンは "
            f"<code>{e(f['backbone'])}</code> です。読み込めなかったファイルは {f['skipped']} 件です(一覧は下にあります)。"
            "</p>")
    pick = "" if "pick" not in f else (
        f"<p class='pick'><b>推奨: {e(f['pick'])}</b>(平均正解率 {f['pick_acc']:.1f}%)。最も正解率が高い手法は "
        f"{e(f['best'])}({f['best_acc']:.1f}%"
        + ("" if f["best_std"] != f["best_std"] else f"、シード間の標準偏差 {f['best_std']:.1f}") + ")です。"
        f"その標準偏差1つ分の範囲に入る手法は {f['near']} 個あり、推奨は"
        + ("その中で学習がまったく要らない手法です。" if f["pick_mb"] != f["pick_mb"] else
           f"その中で学習1ステップのメモリが最も少ない手法です({f['pick_mb']:,.0f} MiB"
           + ("" if not f.get("full_mb") else f"。全体の微調整では {f['full_mb']:,.0f} MiB") + ")。")
        + ("" if not f["unsaved"] else f"{e(f['unsaved'])} は比較しましたが、学習したモデルを <code>clipadapt predict</code> "
           "用に保存できないため、推奨の候補から外しています。") + "</p>")
    limits = ["<h2>この結果からは言えないこと</h2><ul>",
              f"<li>テスト画像は {f['n_test']} 枚です。1枚で正解率が {100 / f['n_test']:.1f} ポイント動きます"
              + ("" if "ci_low" not in f else f"。推奨手法の95%信頼区間は {f['ci_low']:.0f}~{f['ci_high']:.0f}% です")
              + "。これより小さい差は、手法の違いとは言えません。</li>",
              "<li>保存したアダプタと推奨手法の図は、同じテスト画像で選んだ最良シードのものです。そのため、それ自体の"
              "正解率は実力より高めに出ます。見積もりには表のシード平均を使ってください。</li>",
              "<li>テスト画像は学習画像と同じフォルダから取っています。ライン、カメラ、照明、季節が変わると正解率が下がる"
              "ことがあります。推奨手法を使う前に、そうした画像でも確かめてください。</li>",
              "<li>メモリと時間は、この計算機とこのバックボーンで測った学習1ステップと1回の実行の値です。より大きな"
              "バックボーン、別のバッチサイズ、GPU では両方とも変わり、順位が入れ替わることもあります。</li>"]
    if "zero_shot" in f:
        limits.append(
            f"<li>ゼロショット分類の行({f['zero_shot']:.1f}%、偶然当たる確率は {f['chance']:.1f}%)は、学習なしでクラス名だけを"
            "手がかりに分類した結果です。バックボーンがその言葉とこれらの画像をすでに結び付けているかを示します。"
            "偶然と同程度か下回る場合は、結び付いていないということです(知らない名前、またはこの種の画像を見たことの"
            "ないバックボーン)。画像の難しさを表すものではなく、学習する手法の下限でもありません。</li>")
    return head + pick + "".join(limits) + "</ul>"


def write_report(res: dict, out: str | Path) -> Path:
    """Write `out`/report.html for the results record `res` (what `clipadapt.adapt.adapt` returns)."""
    f, figs = facts(res), figures(res)
    skipped = pd.DataFrame(res["tables"]["skipped"] or [{"path": "-", "why": "-"}])
    common = (f"<h2>Methods / 手法</h2>{table_html(res)}{figs.get('fronts', '')}"
              + (f"<h2>The pick / 推奨手法</h2>{figs['pick']}" if "pick" in figs else "")
              + f"<h2>Skipped files / 読み込めなかったファイル</h2>{skipped.to_html(index=False, escape=True)}"
              + f"<p><small>preprocessing / 前処理: <code>{html.escape(res['info']['preprocess'])}</code></small></p>")
    interrupted = res["info"].get("interrupted")
    note = {"en": "<p><b>Interrupted:</b> only the runs that finished are shown; run the same command to resume.</p>",
            "ja": "<p><b>中断しました。</b>終わった実行だけを示しています。同じコマンドを実行すると続きから再開します。</p>"}
    hidden = {"en": "", "ja": " class='hidden'"}
    sections = "".join(
        f"<section lang='{lang}'{hidden[lang]}><h1>{title}</h1>{note[lang] if interrupted else ''}{_prose(f, lang)}"
        "</section>" for lang, title in (("en", "Adapting to your own images"), ("ja", "自社の画像への適用")))
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>clipadapt report</title>"
            f"<style>{CSS}</style><script>{SWITCH}</script></head><body><nav><button onclick=\"show('en')\">English"
            f"</button><button onclick=\"show('ja')\">日本語</button></nav><main>{sections}{common}</main></body></html>")
    path = Path(out) / "report.html"
    atomic_write(path, lambda p: p.write_text(page, encoding="utf-8"))
    return path
