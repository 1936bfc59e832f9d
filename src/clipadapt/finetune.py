"""One supervised fine-tuning loop for every PEFT method of the book: AdamW over what requires grad, timm's cosine
schedule with linear warm-up (per epoch, as SPT's VTAB runs), no augmentation, test accuracy at set epochs.

Data come as datasets that take a list of indices and return a whole batch: a `torch.utils.data.TensorDataset` of
preprocessed images (ci: a few thousand small images, preprocessed once and shared by every run) or an `ImageSet`
that reads and transforms image files per batch (paper: VTAB test splits of up to 26k images at 224 px).

Both the best accuracy over the evaluated epochs (what SPT's and NOAH's code report) and the last-epoch accuracy are
returned, so a chapter can say which is which; on a GPU also the peak memory of training.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from .eval import accuracy
from .utils import progress, seed_everything

NO_DECAY = ("pos_embed", "cls_token")   # as SPT's build_optimizer


@dataclass
class FitConfig:
    """Defaults: SPT's VTAB-1k set-up (AdamW lr 1e-3, wd 1e-4, batch 64, 100 epochs, 10 warm-up, min lr 1e-5;
    test accuracy every 10 epochs and at each of the last 10, as the official scripts evaluate)."""
    epochs: int = 100
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    warmup_epochs: int = 10
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    eval_every: int = 10
    eval_last: int = 10
    num_workers: int = 0     # DataLoader workers (paper: reading and resizing JPEGs)
    seed: int = 0

    def evaluates(self, epoch: int) -> bool:
        """Whether test accuracy is measured after `epoch` (0-based)."""
        return (epoch + 1) % self.eval_every == 0 or epoch >= self.epochs - max(self.eval_last, 1)


class ImageSet(Dataset):
    """Images (a uint8 array, or a lazy `clipadapt.data.registry.ImageFiles`) and labels through a transform; indexed
    by a list of positions, it returns the batch (images, labels) as tensors."""

    def __init__(self, images, labels, transform: Callable):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, torch.as_tensor(np.asarray(labels), dtype=torch.long), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: Sequence[int]):
        from .models.loader import preprocess_batch
        return preprocess_batch(self.transform, [np.asarray(self.images[int(i)]) for i in idx]), self.labels[list(idx)]


def labels_of(data: Dataset) -> torch.Tensor:
    return data.tensors[1] if hasattr(data, "tensors") else data.labels


def batches(data: Dataset, batch_size: int, generator: torch.Generator | None = None, num_workers: int = 0):
    """Batches of `data` (shuffled with `generator`, else in order), each fetched by one list-indexed call."""
    order = RandomSampler(data, generator=generator) if generator is not None else SequentialSampler(data)
    return DataLoader(data, sampler=BatchSampler(order, batch_size, drop_last=False), batch_size=None,
                      num_workers=num_workers)


@torch.no_grad()
def predict(model: nn.Module, data: Dataset, batch_size: int = 256, num_workers: int = 0) -> np.ndarray:
    """Predicted classes of `model` on a dataset (see the module docstring)."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    pred = np.concatenate([model(x.to(dev)).argmax(1).cpu().numpy()
                           for x, _ in batches(data, batch_size, num_workers=num_workers)])
    model.train(was)
    return pred


def fit_classifier(model: nn.Module, train: Dataset, test: Dataset, cfg: FitConfig | None = None,
                   show_progress: bool = False, desc: str = "fine-tune") -> dict:
    """Train the parameters of `model` that require grad on `train`; accuracy (%) on `test`, losses and timings."""
    from timm.scheduler import CosineLRScheduler
    cfg = cfg or FitConfig()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter of the model requires grad")
    seed_everything(cfg.seed)
    decay = [p for n, p in params if not any(k in n for k in NO_DECAY)]
    no_decay = [p for n, p in params if any(k in n for k in NO_DECAY)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    sched = CosineLRScheduler(opt, t_initial=cfg.epochs, lr_min=cfg.min_lr, warmup_t=cfg.warmup_epochs,
                              warmup_lr_init=cfg.warmup_lr, warmup_prefix=False)
    dev = next(model.parameters()).device
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    g = torch.Generator().manual_seed(cfg.seed)
    y_test = labels_of(test).numpy()
    history, steps, t_train = [], 0, 0.0
    for epoch in progress(range(cfg.epochs), desc=desc, disable=not show_progress):
        sched.step(epoch)
        model.train()
        t0, losses = time.perf_counter(), []
        for x, y in batches(train, cfg.batch_size, g, cfg.num_workers):
            loss = F.cross_entropy(model(x.to(dev)), y.to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            steps += 1
        t_train += time.perf_counter() - t0
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses))}
        if cfg.evaluates(epoch):
            row["test_acc"] = accuracy(predict(model, test, num_workers=cfg.num_workers), y_test)
        history.append(row)
    accs = [h["test_acc"] for h in history if "test_acc" in h]
    return {"best": max(accs), "last": history[-1]["test_acc"], "history": history,
            "s_per_step": t_train / max(steps, 1), "s_per_epoch": t_train / cfg.epochs,
            "peak_mem_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else float("nan")}
