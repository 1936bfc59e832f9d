"""The paper-costs page as code: each chapter's paper step measured on the paper architectures (operations, memory
per part) and turned into GPU-hours at a stated utilisation; the words the page uses about them are checked here.

    result = run(setup("ci", gpu="H100 SXM"))
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import costs
from ..profiles import get_profile
from . import core

NAME = "91_paper_costs"


@dataclass(frozen=True)
class Setup:
    profile: str = "ci"
    seed: int = 0
    utilisation: float = 0.4   # share of the GPU's dense bf16 peak a run sustains (an assumption; a GPU run measures it)
    gpu: str = "A100"          # whose peak: "T4 (Colab)", "A100" or "H100 SXM" (clipadapt.costs.GPU_PEAK_TFLOPS)


SETUPS = {"ci": Setup(), "paper": Setup(profile="paper")}


def setup(profile: str = "ci", **overrides) -> Setup:
    return core.make_setup(SETUPS, profile, **overrides)


def run(s: Setup) -> core.Result:
    return core.run(NAME, compute, s)


def _check(holds: bool, what: str) -> None:
    if not holds:
        raise ValueError(f"the costs page says {what}, and this measurement disagrees: revise the page's prose")


def compute(s: Setup, r: core.Result) -> None:
    table = costs.paper_costs(costs.chapter_setups(), utilisation=s.utilisation, gpu=s.gpu,
                              device=get_profile(s.profile).device)
    table["row"] = table["chapter"] + ": " + table["method"]
    r.add_table("costs", table, index=False)
    row = table.set_index("method")
    training = table[table["states_gib"] > 0]
    _check(bool((training["activations_gib"] > training[["weights_gib", "states_gib"]].max(axis=1)).all()),
           "the activations are the largest part of every training step")
    r.text("pc_util_pct", round(100 * s.utilisation))
    r.text("pc_gpu", s.gpu)
    r.text("pc_peak", costs.GPU_PEAK_TFLOPS[s.gpu])
    r.text("pc_min_act_share", (100 * training["activations_gib"] / training["memory_gib"]).min())
    vl = row.loc["vl-pet-large"]
    vl_full = table[(table.chapter == "VL-PET") & (table.method == "full fine-tuning")].iloc[0]
    spt_rows = table[table.chapter == "SPT"].set_index("method")
    spt, spt_full = spt_rows.iloc[0], spt_rows.loc["full fine-tuning"]
    r.text("pc_vlpet_share", 100 * vl["trainable"] / vl["total"])
    r.text("pc_vlpet_mem_ratio", 100 * vl["memory_gib"] / vl_full["memory_gib"])
    r.text("pc_spt_mem_ratio", 100 * spt["memory_gib"] / spt_full["memory_gib"])
    _check(spt["memory_gib"] > spt_full["memory_gib"], "SPT-LoRA holds more memory than full fine-tuning")
    bat_in, bat_c10 = row.loc["BATCLIP (ImageNet-C)"], row.loc["BATCLIP (CIFAR-10-C)"]
    r.text("pc_batclip_in_hours", bat_in["gpu_hours"])
    r.text("pc_batclip_in_mem", bat_in["memory_gib"])
    r.text("pc_batclip_c10_mem", bat_c10["memory_gib"])
    _check(bat_in["memory_gib"] > bat_c10["memory_gib"], "the ImageNet-C step holds more than the CIFAR-10-C step")
    r.text("pc_spt_hours", spt["gpu_hours"])
    r.text("pc_spt_full_hours", spt_full["gpu_hours"])
    r.text("pc_spt_run", spt["run"])
    # what each chapter's decision box quotes (glued there from this page): GPU-seconds per 1,000 units where the
    # paper's whole run has no fixed length, GPU-hours where it has, and the memory of one step at the paper's batch
    by_chapter = table.groupby("chapter").first()
    for key, chapter in (("peclip", "PE-CLIP"), ("vlpet", "VL-PET"), ("da", "Contrastive DA")):
        r.text(f"pc_{key}_s1000", by_chapter.loc[chapter, "gpu_s_per_1000"])
        r.text(f"pc_{key}_mem", by_chapter.loc[chapter, "memory_gib"])
    r.text("pc_batclip_c10_hours", bat_c10["gpu_hours"])
    r.text("pc_spt_mem", spt["memory_gib"])
