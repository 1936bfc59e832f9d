"""Load CLIP models through open_clip: paper weights by tag, a local checkpoint file, or the project's tiny CLIP."""
from .loader import (TINY_NAME, TINY_TAG, LoadedCLIP, ModelError, OfflineWeightsError, known_models, load_backbone,
                     load_clip, preprocess_batch, tiny_checkpoint_path)

__all__ = ["TINY_NAME", "TINY_TAG", "LoadedCLIP", "ModelError", "OfflineWeightsError", "known_models",
           "load_backbone", "load_clip", "preprocess_batch", "tiny_checkpoint_path"]
