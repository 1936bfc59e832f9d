"""Pretraining of the project's tiny CLIP on the micro-world, with open_clip's contrastive loss (`ClipLoss`).

Deterministic under a seed on a given machine; the weights and the training history are cached under
`tiny_checkpoint_path()`, keyed by the model config, the data version and this recipe, so every notebook and test
loads the same file. `python data_scripts/build_ci_assets.py` or `ensure_tiny_clip()` fetches it from this version's
release (`models.release`) or, where that fails, builds it (about 6 minutes on 2 CPU cores).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import microworld
from ..data.microworld import DATA_VERSION
from ..engine import TrainSpec, train
from ..eval import zero_shot_accuracy
from ..transforms import preprocess_batch
from ..utils import ChecksumError, atomic_write, cache_dir, file_digest, seed_everything
from .release import Asset, fetch
from .tiny import TINY_NAME, TINY_TAG, register_configs, tiny_config


@dataclass(frozen=True)
class PretrainConfig:
    seed: int = 0
    n_shapes: int = 48_000       # shape scenes
    n_faces: int = 20_000        # AU-captioned faces
    n_fashion: int = 34_000      # Fashion-MNIST train images (of 60,000)
    epochs: int = 1
    batch_size: int = 64         # small batches: more updates per second, which this budget is short of
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    eval_every: int = 200        # steps between zero-shot checks on small held-out sets
    eval_size: int = 500


def tiny_checkpoint_path() -> Path:
    """Where the tiny CLIP's weights live: the cache, keyed by the model config, the data version and this recipe."""
    key = json.dumps([tiny_config(), DATA_VERSION, PretrainConfig().__dict__], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / "tiny-clip" / f"{TINY_NAME}-{TINY_TAG}-{digest}.pt"


def _lr(step: int, total: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * p))


def pretrain_tiny_clip(cfg: PretrainConfig = PretrainConfig(), out_path: str | Path | None = None,
                       show_progress: bool = True, model_name: str | None = None) -> dict:
    """Train the tiny CLIP from scratch; return the history (and save weights + history when `out_path` is given)."""
    import open_clip
    from open_clip.loss import ClipLoss


    register_configs()
    seed_everything(cfg.seed)
    name = model_name or TINY_NAME
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    tokenizer = open_clip.get_tokenizer(name)
    corpus = microworld.pretraining_corpus(cfg.seed, cfg.n_shapes, cfg.n_faces, cfg.n_fashion, progress=show_progress)
    tokens = tokenizer(corpus.captions)
    evals = [microworld.heldout_shapes(cfg.eval_size), microworld.fashion_test(cfg.eval_size) if cfg.n_fashion else None]
    evals = [e for e in evals if e is not None]

    spec = TrainSpec(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                     no_decay="vectors-embeddings", betas=(0.9, 0.98), eps=1e-6, seed=cfg.seed)
    loss_fn = ClipLoss()
    steps_per_epoch = len(corpus) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    hist: dict = {"config": asdict(cfg), "step": [], "loss": [], "eval_step": [], "eval": {e.name: [] for e in evals}}

    def evaluate(step: int) -> None:
        model.eval()
        hist["eval_step"].append(step)
        for e in evals:
            hist["eval"][e.name].append(zero_shot_accuracy(model, preprocess, tokenizer, e)[0])
        model.train()

    def data(gen, shard):   # one epoch: a fresh permutation, whole batches
        order = torch.randperm(len(corpus), generator=gen).numpy()
        return [order[b * cfg.batch_size:(b + 1) * cfg.batch_size] for b in range(steps_per_epoch)]

    def loss(m, idx):
        images = preprocess_batch(preprocess, [corpus.images[i] for i in idx])
        # encode each distinct caption once (templated captions repeat within a batch): same loss, less compute
        uniq, inverse = torch.unique(tokens[idx], dim=0, return_inverse=True)
        return loss_fn(m.encode_image(images, normalize=True), m.encode_text(uniq, normalize=True)[inverse],
                       m.logit_scale.exp())

    def after(step) -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        hist["step"].append(step.step)
        hist["loss"].append(step.loss)
        if step.step % cfg.eval_every == 0 or step.step == total:
            evaluate(step.step)

    t0 = time.time()
    evaluate(0)
    train(model, spec, data, loss, lr_at=lambda step: _lr(step, total, cfg), on_step=after, reseed=False,
          show_progress=show_progress, desc="pretrain tiny CLIP")
    hist["train_seconds"] = round(time.time() - t0, 1)
    hist["n_pairs"] = len(corpus)
    hist["sources"] = {s: int(np.sum(np.array(corpus.source) == s)) for s in sorted(set(corpus.source))}
    model.eval()
    if out_path is not None:
        save_tiny_clip(model.state_dict(), hist, out_path)
    hist["model"] = model
    return hist


def save_tiny_clip(state_dict: dict, hist: dict, out_path: str | Path) -> None:
    """Write the weights, then the history, then (last: the build is complete) the weights' sha256."""
    out_path, text = Path(out_path), json.dumps(hist)
    digest_path(out_path).unlink(missing_ok=True)
    atomic_write(out_path, lambda p: torch.save(state_dict, p))
    atomic_write(history_path(out_path), lambda p: p.write_text(text))
    digest = file_digest(out_path)
    atomic_write(digest_path(out_path), lambda p: p.write_text(digest))


def history_path(ckpt: Path) -> Path:
    return Path(ckpt).with_suffix(".history.json")


def digest_path(ckpt: Path) -> Path:
    return Path(ckpt).with_suffix(".sha256")


REBUILD = "python data_scripts/build_ci_assets.py --force   # about 5 minutes on 2 cores"


def check_digest(got: str, record: Path, what: str, rebuild: str = REBUILD) -> str:
    """`got`, the sha256 of `what` now, against the one in `record`, written when it was built: a mismatch is an error
    that gives the `rebuild` command (never a silent retrain or a silent load). A build from before digests were
    recorded gets its digest now. The one check of both tiny models."""
    if not record.exists():
        atomic_write(record, lambda p: p.write_text(got))
        return got
    recorded = record.read_text().strip()
    if got != recorded:
        raise ChecksumError(f"{what} does not match the sha256 recorded when it was built ({got[:12]} against "
                            f"{recorded[:12]}): it was damaged or replaced. Rebuild it with\n    {rebuild}")
    return got


def folder_digest(folder: Path, exclude: tuple[str, ...] = ()) -> str:
    """One sha256 over a folder's files in a fixed order: of the `sha256sum` lines ("<sha256>  <path>") of its files
    sorted by relative path, leaving out the `exclude`d names and hidden (temporary) files."""
    folder = Path(folder)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.name not in exclude and not p.name.startswith("."))
    lines = "".join(f"{file_digest(folder / f)}  {f}\n" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def check_tiny_checkpoint(path: Path) -> str:
    """The sha256 of the cached tiny CLIP's weights, checked against the one recorded when they were built: a
    damaged, cut-short or replaced file, or a build without its history, is an error that gives the rebuild command
    (never a silent retrain or a silent load). A cache built before digests were recorded gets its digest now."""
    path = Path(path)
    if not history_path(path).exists():
        raise ChecksumError(f"the tiny CLIP at {path} has no pretraining history ({history_path(path).name}): its build "
                            f"did not finish. Rebuild it with\n    {REBUILD}")
    return check_digest(file_digest(path), digest_path(path), f"the tiny CLIP at {path}")


def clip_asset() -> Asset:
    """The tiny CLIP as a release asset: its history, weights and sha256 (installed in that order)."""
    path, root = tiny_checkpoint_path(), cache_dir()
    files = tuple(p.relative_to(root).as_posix() for p in (history_path(path), path, digest_path(path)))
    return Asset("tiny-clip.tar", "the tiny CLIP", files, lambda r: check_tiny_checkpoint(r / files[1]))


def ensure_tiny_clip(show_progress: bool = True) -> Path:
    """Path of the cached tiny CLIP checkpoint, checked; when missing, fetched from this version's release or, where
    that fails (offline, no asset, a checksum mismatch: one line says which), pretrained here."""
    path = tiny_checkpoint_path()
    if not path.exists() and not fetch(clip_asset()):
        pretrain_tiny_clip(PretrainConfig(), path, show_progress=show_progress)
    check_tiny_checkpoint(path)
    return path


def load_history() -> dict:
    """The pretraining history (loss per step, zero-shot accuracy at checkpoints) of the cached tiny CLIP."""
    return json.loads(history_path(ensure_tiny_clip(show_progress=False)).read_text())
