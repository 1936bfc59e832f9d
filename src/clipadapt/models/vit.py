"""Image classifiers on timm's VisionTransformer, for the fine-tuning chapters (SPT).

- ci: the tiny CLIP's image tower, converted by timm's own OpenAI-CLIP converter
  (`timm.models.vision_transformer.checkpoint_filter_fn`), so both profiles fine-tune the same timm class.
- paper: a timm checkpoint by name, by default `vit_base_patch16_224.orig_in21k`: the supervised ImageNet-21k
  ViT-B/16 released with the ViT paper (`ViT-B_16.npz`), the backbone of SPT's VTAB-1k and FGVC tables.
Transforms (no augmentation, as SPT trains): open_clip's own for the tiny tower; for the paper backbone SPT's VTAB
transform, a direct bicubic resize to 224 x 224 and ImageNet's mean and std (the official scripts do not pass
`--inception`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..finetune import ImageSet
from ..profiles import get_profile
from ..transforms import preprocess_batch
from .loader import load_clip
from .tiny import TINY_NAME, TINY_TAG

PAPER_VIT = "vit_base_patch16_224.orig_in21k"   # the original Google ImageNet-21k ViT-B/16 (ViT-B_16.npz)


@dataclass
class LoadedViT:
    model: nn.Module          # timm VisionTransformer with a fresh head of `num_classes`
    transform: Callable       # PIL image -> normalised tensor at the model's resolution
    name: str

    def preprocess(self, images: np.ndarray, batch_size: int = 512) -> torch.Tensor:
        """A uint8 array batch (n x h x w x 3) as one float tensor through the model's transform."""
        return torch.cat([preprocess_batch(self.transform, images[i:i + batch_size])
                          for i in range(0, len(images), batch_size)])

    def dataset(self, images, labels):
        """A list-indexed dataset for `clipadapt.finetune`: images in memory (a uint8 array) are preprocessed once
        into a TensorDataset; lazily read files (`ImageFiles`) are transformed per batch."""
        from torch.utils.data import TensorDataset

        if isinstance(images, np.ndarray):
            return TensorDataset(self.preprocess(images), torch.as_tensor(labels, dtype=torch.long))
        return ImageSet(images, labels, self.transform)


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


def load_vit(profile: str, num_classes: int, paper_model: str = PAPER_VIT, device: str | None = None,
             checkpoint: str | None = None) -> LoadedViT:
    """The fine-tuning backbone of a profile, with a new head for `num_classes` classes.

    paper: timm's `paper_model` with its pretrained weights from the Hugging Face hub, or from the local file
    `checkpoint` (a timm state dict, e.g. copied from a machine with internet), and drop path 0.1 as SPT's models.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 (a classification head), got {num_classes}")
    import timm
    prof = get_profile(profile)
    dev = device or prof.device
    if prof.name == "ci":
        clip = load_clip(TINY_NAME, TINY_TAG)   # a copy of the cached tiny CLIP
        vit = clip_image_tower(clip.model.visual, num_classes)
        return LoadedViT(vit.to(dev), clip.preprocess, f"{TINY_NAME} image tower (timm)")
    if paper_model not in timm.list_models(pretrained=True):
        raise ValueError(f"unknown timm model {paper_model!r}; see timm.list_models(pretrained=True), e.g. {PAPER_VIT}")
    overlay = {}
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"no checkpoint file at {checkpoint}; pass a timm state dict saved with "
                                    f"torch.save(model.state_dict(), path), or checkpoint=None to download {paper_model}")
        overlay = {"file": str(checkpoint)}
    try:
        vit = timm.create_model(paper_model, pretrained=True, num_classes=num_classes, drop_path_rate=0.1,
                                pretrained_cfg_overlay=overlay)
    except Exception as e:  # hub errors differ between versions: say what to do
        raise RuntimeError(f"could not load timm weights {paper_model}: {e}. The paper profile downloads them from "
                           "the Hugging Face hub; on an offline machine pass checkpoint= a local copy of the weights "
                           "(or copy the hub cache, HF_HOME).") from e
    size = vit.default_cfg["input_size"]
    transform = timm.data.create_transform(input_size=size, crop_pct=1.0, crop_mode="squash", interpolation="bicubic",
                                           mean=timm.data.IMAGENET_DEFAULT_MEAN, std=timm.data.IMAGENET_DEFAULT_STD)
    return LoadedViT(vit.to(dev), transform, paper_model)
