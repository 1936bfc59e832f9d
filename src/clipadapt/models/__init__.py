"""Load CLIP models through open_clip: paper weights by tag, a local checkpoint file, or the project's tiny CLIP."""
from ..transforms import preprocess_batch
from .loader import LoadedCLIP, ModelError, OfflineWeightsError, known_models, load_backbone, load_clip
from .pretrain import tiny_checkpoint_path
from .tiny import TINY_NAME, TINY_TAG

__all__ = ["TINY_NAME", "TINY_TAG", "LoadedCLIP", "ModelError", "OfflineWeightsError", "known_models",
           "load_backbone", "load_clip", "preprocess_batch", "tiny_checkpoint_path"]
