"""The own-images page as code: `clipadapt adapt` on a real image set that ships offline and that this project did
not make (the textile surfaces of the PyPI package `conformal-clip-data`, Megahed et al. 2025: nominal weave, local
defects, global defects), then `clipadapt predict` with the pick's saved adapter on a few test images.

    result = run(setup("ci"))
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import adapt as tool
from ..arena import ArenaConfig
from ..engine import TrainSpec
from ..report import facts
from ..utils import atomic_write, cache_dir, spawn_seeds
from . import core

NAME = "07_own_images"
SOURCE = ("conformal-clip-data (PyPI), the simulated textile images of Megahed et al. 2025, "
          "https://arxiv.org/abs/2501.12596")
DESCRIPTIONS = {   # class folder -> the text the text classifiers compare an image with
    "nominal": "a photo of a plain woven textile surface without defects.",
    "local": "a photo of a woven textile surface with one small local defect.",
    "global": "a photo of a woven textile surface with a defect across the whole surface.",
}


@dataclass(frozen=True)
class Setup:
    profile: str = "ci"
    seed: int = 0
    n_seeds: int = 3
    per_class: int = 100           # images drawn per class (the package has 1,000 nominal, 500 local, 500 global)
    shots: int = 16
    test_fraction: float = 0.25
    epochs: int = 20
    backbone: str = "clipadapt-tiny"
    methods: tuple[str, ...] | None = None   # None: every arena row that fits the backbone
    n_predict: int = 6             # test images the page's predict step labels


SETUPS = {"ci": Setup(), "paper": Setup(profile="paper", per_class=500, backbone="ViT-B-16:openai")}


def setup(profile: str = "ci", **overrides) -> Setup:
    return core.make_setup(SETUPS, profile, **overrides)


def run(s: Setup) -> core.Result:
    return core.run(NAME, compute, s)


def textile_csv(s: Setup, folder) -> str:
    """A CSV (path,label) of `per_class` images of each class, drawn with the set-up's seed; and a names file with
    each class's description. Returns the CSV's path."""
    import conformal_clip_data as ccd
    rng = np.random.default_rng(spawn_seeds(s.seed, 1, "textile subset")[0])
    rows = ["path,label"]
    for label in DESCRIPTIONS:
        files = sorted((ccd.textile_simulated_root() / label).glob("*.jpg"))
        if len(files) < s.per_class:
            raise ValueError(f"{label}: {len(files)} images in conformal-clip-data, fewer than per_class={s.per_class}")
        rows += [f"{files[i]},{label}" for i in np.sort(rng.permutation(len(files))[:s.per_class])]
    names = "".join(f"{k}\t{k}\t{v}\n" for k, v in DESCRIPTIONS.items())
    atomic_write(folder / "textiles.csv", lambda p: p.write_text("\n".join(rows) + "\n", encoding="utf-8"))
    atomic_write(folder / "names.tsv", lambda p: p.write_text(names, encoding="utf-8"))
    return str(folder / "textiles.csv")


def compute(s: Setup, r: core.Result) -> None:
    work = cache_dir() / "own-images" / core.cache_path(NAME, s).stem
    data = textile_csv(s, work)
    cfg = ArenaConfig(shots=s.shots, fit=TrainSpec(epochs=s.epochs, lr=3e-3, warmup=0.1, batch_size=32,
                                                   eval_every=s.epochs, eval_last=1))
    t0 = time.perf_counter()
    res = tool.adapt(data, work / "run", s.backbone, list(s.methods) if s.methods else None, s.shots, s.n_seeds,
                     s.seed, s.test_fraction, work / "names.tsv", cfg=cfg)
    adapt_s = time.perf_counter() - t0
    r.record.tables["adapt"] = res
    f = facts(res)
    board = pd.DataFrame(res["tables"]["summary"]).set_index("method")
    r.add_table("summary", board.reset_index(), index=False)

    # the predict step: the pick's adapter on a few test images, against the run's own predictions
    test = res["tables"]["test"]
    shown = np.linspace(0, len(test["paths"]) - 1, min(s.n_predict, len(test["paths"]))).round().astype(int)
    paths = [test["paths"][i] for i in shown]
    t0 = time.perf_counter()
    pred = tool.predict(work / "run" / "adapters" / tool.slug(f["pick"]), paths)
    predict_s = time.perf_counter() - t0
    in_run = test["predictions"][f["pick"]]
    classes = res["info"]["classes"]
    if list(pred["label"]) != [classes[in_run["pred"][i]] for i in shown] or not np.allclose(
            pred["probability"], [in_run["prob"][i] for i in shown], atol=1e-5):
        raise ValueError("clipadapt predict disagrees with the adapt run on the same images: the page says they agree")
    pred.insert(1, "true", [classes[test["labels"][i]] for i in shown])
    pred["path"] = pred["path"].map(lambda p: "…/" + "/".join(p.split("/")[-2:]))
    r.add_table("predict", pred.drop(columns="error"), index=False)

    r.text("own_source", SOURCE)
    r.text("own_n_images", f"{len(DESCRIPTIONS) * s.per_class:,}")
    r.text("own_per_class", s.per_class)
    r.text("own_skipped", f["skipped"])
    for k in ("n_test", "n_train", "shots", "seeds"):
        r.text(f"own_{k}", f[k])
    r.text("own_n_methods", len(board))
    r.text("own_minutes", f"{adapt_s / 60:.1f}")
    r.text("own_predict_s", f"{predict_s:.1f}")
    r.text("own_n_predict", s.n_predict)
    r.text("own_pick", f["pick"])
    r.text("own_best", f["best"])
    r.log("pick_accuracy", f["pick_acc"], glue_as="own_pick_acc")
    r.log("best_accuracy", f["best_acc"], glue_as="own_best_acc")
    r.text("own_ci", f"{f['ci_low']:.0f}–{f['ci_high']:.0f}%")
    r.text("own_chance", f"{f['chance']:.1f}%")
    if "zero_shot" in f:
        r.log("zero_shot_accuracy", f["zero_shot"], glue_as="own_zero_shot")
        above = f["zero_shot"] > f["chance"]
        r.text("own_zero_shot_vs_chance", "above" if above else "not above")
        r.text("own_zero_shot_vs_chance_ja", "上回りました" if above else "上回りませんでした")
    r.text("own_pick_is_best", "is also" if f["pick"] == f["best"] else "is not")
    r.text("own_pick_is_best_ja", "最も正解率の高い手法と同じです" if f["pick"] == f["best"]
           else "最も正解率の高い手法とは別の手法です")
