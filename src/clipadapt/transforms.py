"""Image transforms shared by every layer (data, evaluation, methods, models)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image


def preprocess_batch(preprocess: Callable[[Image.Image], torch.Tensor], images: np.ndarray) -> torch.Tensor:
    """Apply a model's own evaluation transform to a uint8 array batch (n x h x w x 3)."""
    return torch.stack([preprocess(Image.fromarray(im)) for im in images])
