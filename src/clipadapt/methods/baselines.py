"""The baselines every chapter compares with, one class each on every backbone where the book uses them.

- `zero-shot`: CLIP as it is, classes by their texts (nothing trains);
- `linear-probe`: a linear classifier on frozen features (the image tower's head; on CLIP, PE-CLIP's probe on the
  mean-pooled, normalised frame embeddings);
- `full-finetune`: every weight (on CLIP all but `logit_scale`: the logits keep the backbone's temperature);
- `lora`: LoRA through peft (image tower: the attention's fused qkv projection of every block at rank r, as SPT's
  VTAB-1k baseline; VL model: q and v of every attention at rank d/6, as VL-PET's Table 2);
- `adapter`: a sequential bottleneck adapter after the MLP of every block (SPT's adapter baseline).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import Method, option
from .peclip import PEClip, encode_video
from .registry import register
from .spt import add_structured, block_linears, full_finetune, linear_probe
from .vlpet import BaselineConfig, apply_vl


class VideoLinearProbe(nn.Module):
    """A linear classifier on the frozen CLIP's mean-pooled, L2-normalised frame embeddings (images: clips of one
    frame)."""

    def __init__(self, clip: nn.Module, n_classes: int):
        super().__init__()
        self.clip = clip.requires_grad_(False)
        self.head = nn.Linear(clip.visual.output_dim, n_classes)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            video = encode_video(self.clip, frames)
        return self.head(video)


@register("zero-shot", "zero-shot")
class ZeroShot(Method):
    """CLIP as it is: each class by the cosine with its text; nothing trains."""
    family, backbones, chapter = "zero-shot", ("clip",), "backbone"

    def _apply(self, backbone, kind, data):
        return PEClip(backbone.clip, backbone.tokenizer, backbone.texts, adapters=False, prompts=False,
                      temperature=backbone.temperature)


@register("linear-probe", "linear probe")
class LinearProbe(Method):
    """A linear classifier on the frozen backbone's features."""
    family, backbones, chapter = "head", ("image", "clip"), "SPT"

    def _apply(self, backbone, kind, data):
        if kind == "image":
            return linear_probe(backbone)
        return VideoLinearProbe(backbone.clip, len(backbone.texts))


@register("full-finetune", "full fine-tuning")
class FullFinetune(Method):
    """Every weight of the backbone trains (the reference for accuracy and memory)."""
    family, backbones, chapter = "full", ("image", "clip", "vl"), "SPT"

    def _apply(self, backbone, kind, data):
        if kind == "image":
            return full_finetune(backbone)
        if kind == "vl":
            return apply_vl(backbone, "full")
        model = PEClip(backbone.clip, backbone.tokenizer, backbone.texts, adapters=False, prompts=False,
                      temperature=backbone.temperature)
        for n, p in model.clip.named_parameters():
            p.requires_grad_(n != "logit_scale")   # the logits keep the backbone's temperature
        return model


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = option(8, "image tower: LoRA rank on each block's qkv projection (SPT's VTAB-1k LoRA-8)", paper=8,
                       minimum=1)
    dropout: float = option(0.1, "image tower: dropout before the LoRA down-projection")
    rank_reduction: int = option(6, "VL model: rank = d_model / this, on q and v (128 on BART-base), alpha r/4",
                                 paper=6, minimum=1)


@register("lora", "LoRA")
class LoRA(Method):
    """Low-rank updates of the attention projections through peft, plus the head (image tower) or the biases (VL)."""
    family, backbones, chapter, config_class = "peft", ("image", "vl"), "SPT", LoRAConfig

    def _apply(self, backbone, kind, data):
        if kind == "vl":
            return apply_vl(backbone, "lora", base=BaselineConfig(lora_rank_reduction=self.cfg.rank_reduction))
        linear_probe(backbone)
        add_structured(backbone, block_linears(backbone, "attn.qkv"), "lora", self.cfg.rank, self.cfg.dropout)
        return backbone


@dataclass(frozen=True)
class AdapterConfig:
    rank: int = option(8, "bottleneck width of the adapter after each block's MLP (SPT's VTAB-1k setting)", paper=8,
                       minimum=1)
    dropout: float = option(0.1, "dropout before the down-projection")


@register("adapter", "adapter")
class Adapter(Method):
    """A sequential bottleneck adapter after the MLP of every block, plus the head."""
    family, backbones, chapter, config_class = "peft", ("image",), "SPT", AdapterConfig

    def _apply(self, backbone, kind, data):
        linear_probe(backbone)
        add_structured(backbone, block_linears(backbone, "mlp.fc2"), "adapter", self.cfg.rank, self.cfg.dropout)
        return backbone
