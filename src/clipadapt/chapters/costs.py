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
    spt_adapter = spt_rows[spt_rows.index.str.startswith("spt-adapter")].iloc[0]
    r.text("pc_vlpet_share", 100 * vl["trainable"] / vl["total"])
    r.text("pc_vlpet_mem_ratio", 100 * vl["memory_gib"] / vl_full["memory_gib"])
    r.text("pc_spt_mem_ratio", 100 * spt["memory_gib"] / spt_full["memory_gib"])
    r.text("pc_spt_act", spt["activations_gib"])
    r.text("pc_spt_full_act", spt_full["activations_gib"])
    r.text("pc_spt_act_pct", 100 * spt["activations_gib"] / spt_full["activations_gib"])
    r.text("pc_spt_adapter_mem_ratio", 100 * spt_adapter["memory_gib"] / spt_full["memory_gib"])
    r.text("pc_spt_adapter_act_pct", 100 * spt_adapter["activations_gib"] / spt_full["activations_gib"])
    _check(bool(max(spt["activations_gib"], spt_adapter["activations_gib"]) < spt_full["activations_gib"]),
           "SPT-LoRA and SPT-Adapter keep fewer activations than full fine-tuning (the copies this code leaves out)")
    # activation checkpointing: each PEFT step with it against full fine-tuning of the same backbone without it
    full_mem = table[table["method"] == "full fine-tuning"].set_index("chapter")["memory_gib"]
    peft = training[(training["method"] != "full fine-tuning") & training["chapter"].isin(full_mem.index)]
    ckpt_share = 100 * peft["ckpt_memory_gib"] / peft["chapter"].map(full_mem)
    r.text("pc_ckpt_max_share", ckpt_share.max())
    r.text("pc_ckpt_max_share_row", peft.loc[ckpt_share.idxmax(), "row"])
    r.text("pc_spt_ckpt_share", 100 * spt["ckpt_memory_gib"] / spt_full["memory_gib"])
    r.text("pc_spt_ckpt_ops", spt["ckpt_extra_ops_pct"])
    r.text("pc_ckpt_ops_min", training["ckpt_extra_ops_pct"].min())
    r.text("pc_ckpt_ops_max", training["ckpt_extra_ops_pct"].max())
    _check(bool((training["ckpt_memory_gib"] < training["memory_gib"]).all()),
           "checkpointing lowers every training step's memory")
    bat_in, bat_c10 = row.loc["BATCLIP (ImageNet-C)"], row.loc["BATCLIP (CIFAR-10-C)"]
    r.text("pc_batclip_in_hours", bat_in["gpu_hours"])
    r.text("pc_batclip_in_mem", bat_in["memory_gib"])
    r.text("pc_batclip_c10_mem", bat_c10["memory_gib"])
    _check(bat_c10["memory_gib"] > bat_in["memory_gib"],
           "BATCLIP's memory follows its images per batch (CIFAR-10-C's 200 above ImageNet-C's 64 and 1,000 prompts)")
    r.text("pc_batclip_in_tokens", costs.prompt_positions("imagenet-c"))
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
