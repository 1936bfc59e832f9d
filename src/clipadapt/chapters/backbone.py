"""The backbone chapter as code: the tiny CLIP's pretraining curve (ci), its size, zero-shot accuracy and recall per
class on Fashion-MNIST and held-out shapes, and how well its text tower detects Action Units on faces.

    result = run(setup("ci"))
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..bench import count_parameters
from ..data import faces, microworld
from ..eval import attribute_auc, confusion_matrix, encode_images, encode_texts, zero_shot_accuracy
from ..models import load_backbone
from ..models.pretrain import load_history
from ..profiles import get_profile
from . import core

NAME = "00_backbone"


@dataclass(frozen=True)
class Setup:
    profile: str = "ci"
    seed: int = 0
    n_shapes: int = 2000     # held-out shapes for zero-shot
    n_faces: int = 1000      # held-out faces for the Action-Unit check


SETUPS = {"ci": Setup(), "paper": Setup(profile="paper")}


def setup(profile: str = "ci", **overrides) -> Setup:
    return core.make_setup(SETUPS, profile, **overrides)


def run(s: Setup) -> core.Result:
    return core.run(NAME, compute, s)


def compute(s: Setup, r: core.Result) -> None:
    device = get_profile(s.profile).device
    if s.profile == "ci":   # the project pretrains the tiny CLIP; the paper backbone comes pretrained by OpenAI
        hist = load_history()
        r.add_table("pretrain_loss", pd.DataFrame({"step": hist["step"], "loss": hist["loss"]}), index=False)
        r.add_table("pretrain_eval", pd.DataFrame({"step": hist["eval_step"], **hist["eval"]}), index=False)
        r.log("train_minutes", hist["train_seconds"] / 60, glue_as="bb_train_minutes")
        r.text("bb_pairs", hist["n_pairs"])
    else:
        r.text("bb_train_minutes", "n/a (pretrained by its authors)")
        r.text("bb_pairs", "n/a")

    bb = load_backbone(s.profile)
    r.log("params_total_m", count_parameters(bb.model).total / 1e6, glue_as="bb_params_m")
    rows, cms = [], []
    for ds in (microworld.fashion_test(), microworld.heldout_shapes(s.n_shapes)):
        acc, pred = zero_shot_accuracy(bb.model, bb.preprocess, bb.tokenizer, ds,
                                       template=microworld.ZERO_SHOT_TEMPLATE, device=device)
        rows.append({"dataset": ds.name, "images": len(ds.labels), "classes": len(ds.classes),
                     "chance (%)": 100 / len(ds.classes), "zero-shot top-1 (%)": acc})
        cm = pd.DataFrame(confusion_matrix(pred, ds.labels, len(ds.classes)), index=list(ds.classes),
                          columns=list(ds.classes))
        cms.append(cm.rename_axis("true").reset_index().assign(dataset=ds.name))
    r.add_table("zero_shot", pd.DataFrame(rows), index=False)
    r.add_table("confusion", pd.concat(cms), index=False)
    r.log("zero_shot_fashion_top1", rows[0]["zero-shot top-1 (%)"], glue_as="bb_zs_fashion")
    r.log("zero_shot_shapes_top1", rows[1]["zero-shot top-1 (%)"], glue_as="bb_zs_shapes")

    fimgs, faus = microworld.heldout_faces(s.n_faces)
    img_f = encode_images(bb.model, bb.preprocess, fimgs, device=device)
    txt_f = encode_texts(bb.model, bb.tokenizer, [f"a face with {faces.AU_NAMES[a].lower()}." for a in faces.AUS],
                         device=device)
    auc = attribute_auc(img_f, txt_f, faus >= faces.ACTIVE)
    r.log("au_auc_mean", float(np.nanmean(auc)), glue_as="bb_au_auc")
    r.add_table("au_auc", pd.DataFrame([{"au": f"AU{a}", "name": faces.AU_NAMES[a], "auc": float(v)}
                                        for a, v in zip(faces.AUS, auc)]), index=False)
