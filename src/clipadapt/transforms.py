"""Image transforms shared by every layer (data, evaluation, methods, models)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image


def check_images(images: np.ndarray, name: str = "images") -> np.ndarray:
    """`images` must be a non-empty uint8 batch, n x h x w x 3 (RGB, channels last); otherwise an error that says how
    to convert what was given."""
    x = images
    if isinstance(x, (list, tuple)):   # images of different sizes: each one checked
        if not x:
            raise ValueError(f"{name} is empty: give at least one image")
        for im in x:
            check_images(im[None] if isinstance(im, np.ndarray) else im, name)
        return x
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a NumPy uint8 array, n x h x w x 3, got {type(x).__name__}; for a torch "
                        "tensor use .numpy(), for PIL images np.stack([np.asarray(im.convert('RGB')) for im in ims])")
    if x.ndim == 3:
        raise ValueError(f"{name} has shape {x.shape}: one image or grey images without a channel axis; give a batch "
                         "n x h x w x 3 (one image: x[None]; grey: np.repeat(x[..., None], 3, axis=-1))")
    if x.ndim != 4:
        raise ValueError(f"{name} must be a batch n x h x w x 3, got shape {x.shape}")
    if len(x) == 0:
        raise ValueError(f"{name} is empty (shape {x.shape}): give at least one image")
    if x.shape[-1] != 3:
        if x.shape[1] == 3:
            fix = "channels first: use x.transpose(0, 2, 3, 1)"
        elif x.shape[-1] == 1:
            fix = "grey: use np.repeat(x, 3, axis=-1)"
        elif x.shape[-1] == 4:
            fix = "RGBA: drop the alpha channel with x[..., :3]"
        else:
            fix = "the last axis must be the 3 colour channels"
        raise ValueError(f"{name} has shape {x.shape}, expected n x h x w x 3 (RGB, channels last); {fix}")
    if x.dtype != np.uint8:
        if np.issubdtype(x.dtype, np.floating):
            fix = ("floats: if they are in 0-1 use (x * 255).round().astype(np.uint8); if in 0-255, "
                   "x.round().astype(np.uint8)")
        elif x.dtype == np.uint16:
            fix = "16-bit: use (x >> 8).astype(np.uint8)"
        else:
            fix = "use np.clip(x, 0, 255).astype(np.uint8)"
        raise TypeError(f"{name} are {x.dtype}, expected uint8 values 0-255; {fix}")
    return x


def preprocess_batch(preprocess: Callable[[Image.Image], torch.Tensor], images: np.ndarray) -> torch.Tensor:
    """Apply a model's own evaluation transform to a uint8 array batch (n x h x w x 3)."""
    return torch.stack([preprocess(Image.fromarray(im)) for im in check_images(images)])
