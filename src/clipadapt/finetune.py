"""One supervised fine-tuning loop for every PEFT method of the book: AdamW over what requires grad, timm's cosine
schedule with linear warm-up (per epoch, as SPT's VTAB runs), no augmentation, test accuracy after every epoch.

Both the best accuracy over epochs (what SPT's and NOAH's code report) and the last-epoch accuracy are returned, so
a chapter can say which is which.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .eval import accuracy
from .utils import progress, seed_everything

NO_DECAY = ("pos_embed", "cls_token")   # as SPT's build_optimizer


@dataclass
class FitConfig:
    """Defaults: SPT's VTAB-1k set-up (AdamW lr 1e-3, wd 1e-4, batch 64, 100 epochs, 10 warm-up, min lr 1e-5)."""
    epochs: int = 100
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    warmup_epochs: int = 10
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    seed: int = 0


@torch.no_grad()
def predict(model: nn.Module, x, batch_size: int = 256) -> np.ndarray:
    """Predicted classes of `model` on preprocessed images `x` (a tensor, or anything sliceable into tensors)."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    pred = np.concatenate([model(x[i:i + batch_size].to(dev)).argmax(1).cpu().numpy()
                           for i in range(0, len(x), batch_size)])
    model.train(was)
    return pred


def fit_classifier(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                   y_test: torch.Tensor, cfg: FitConfig | None = None, show_progress: bool = False,
                   desc: str = "fine-tune") -> dict:
    """Train the parameters of `model` that require grad; returns accuracies, losses and timings."""
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
    g = torch.Generator().manual_seed(cfg.seed)
    history, steps, t_train = [], 0, 0.0
    for epoch in progress(range(cfg.epochs), desc=desc, disable=not show_progress):
        sched.step(epoch)
        model.train()
        perm = torch.randperm(len(x_train), generator=g)
        t0, losses = time.perf_counter(), []
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            loss = F.cross_entropy(model(x_train[idx].to(dev)), y_train[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            steps += 1
        t_train += time.perf_counter() - t0
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "test_acc": accuracy(predict(model, x_test), y_test)})
    accs = [h["test_acc"] for h in history]
    return {"best": max(accs), "last": accs[-1], "history": history, "s_per_step": t_train / max(steps, 1),
            "s_per_epoch": t_train / cfg.epochs}
