"""Image classifiers on timm's VisionTransformer, for the fine-tuning chapters (SPT).

- ci: the tiny CLIP's image tower, converted by timm's own OpenAI-CLIP converter
  (`timm.models.vision_transformer.checkpoint_filter_fn`), so both profiles fine-tune the same timm class.
- paper: a timm checkpoint by name, by default `vit_base_patch16_224.augreg_in21k` (supervised ImageNet-21k
  ViT-B/16, the backbone of SPT's VTAB-1k and FGVC tables).
The eval transform is the model's own: open_clip's for the tiny tower, timm's data config for a timm checkpoint (no
augmentation, as SPT trains).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import torch
from torch import nn

from .loader import TINY_NAME, TINY_TAG, load_clip, preprocess_batch

PAPER_VIT = "vit_base_patch16_224.augreg_in21k"


@dataclass
class LoadedViT:
    model: nn.Module          # timm VisionTransformer with a fresh head of `num_classes`
    transform: Callable       # PIL image -> normalised tensor at the model's resolution
    name: str

    def preprocess(self, images: np.ndarray, batch_size: int = 512) -> torch.Tensor:
        """A uint8 array batch (n x h x w x 3) as one float tensor through the model's transform."""
        return torch.cat([preprocess_batch(self.transform, images[i:i + batch_size])
                          for i in range(0, len(images), batch_size)])


def clip_image_tower(visual: nn.Module, num_classes: int) -> nn.Module:
    """timm VisionTransformer with the weights of an open_clip ViT image tower and a new zero-init head."""
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
    width = visual.conv1.out_channels
    blocks = visual.transformer.resblocks
    vit = VisionTransformer(
        img_size=visual.image_size[0], patch_size=visual.patch_size[0], embed_dim=width, depth=len(blocks),
        num_heads=blocks[0].attn.num_heads, mlp_ratio=blocks[0].mlp.c_fc.out_features / width, pre_norm=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-5), num_classes=visual.proj.shape[1], class_token=True,
        global_pool="token")
    state = checkpoint_filter_fn({f"visual.{k}": v for k, v in visual.state_dict().items()}, vit)
    vit.load_state_dict(state)
    vit.reset_classifier(num_classes)
    return vit


def load_vit(profile: str, num_classes: int, paper_model: str = PAPER_VIT, device: str | None = None) -> LoadedViT:
    """The fine-tuning backbone of a profile, with a new head for `num_classes` classes."""
    import timm
    from ..profiles import get_profile
    prof = get_profile(profile)
    dev = device or prof.device
    if prof.name == "ci":
        clip = load_clip(TINY_NAME, TINY_TAG)   # a copy of the cached tiny CLIP
        vit = clip_image_tower(clip.model.visual, num_classes)
        return LoadedViT(vit.to(dev), clip.preprocess, f"{TINY_NAME} image tower (timm)")
    if paper_model not in timm.list_models(pretrained=True):
        raise ValueError(f"unknown timm model {paper_model!r}; see timm.list_models(pretrained=True), e.g. {PAPER_VIT}")
    try:
        vit = timm.create_model(paper_model, pretrained=True, num_classes=num_classes)
    except Exception as e:  # hub errors differ between versions: say what to do
        raise RuntimeError(f"could not load timm weights {paper_model}: {e}. The paper profile downloads them from "
                           "the Hugging Face hub; on an offline machine download them elsewhere and copy the "
                           "hub cache (HF_HOME).") from e
    cfg = timm.data.resolve_data_config({}, model=vit)
    return LoadedViT(vit.to(dev), timm.data.create_transform(**cfg, is_training=False), paper_model)
