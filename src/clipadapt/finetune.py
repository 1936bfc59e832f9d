"""Supervised fine-tuning of a classifier for every PEFT method of the book, on the project's training engine
(`clipadapt.engine.train`): AdamW over what requires grad, timm's cosine schedule with linear warm-up (per epoch, as
SPT's VTAB runs), no augmentation (timm's Mixup on request), test accuracy at set epochs.

Data come as datasets that take a list of indices and return a whole batch: a `torch.utils.data.TensorDataset` of
preprocessed images (ci: a few thousand small images, preprocessed once and shared by every run) or an `ImageSet`
that reads and transforms image files per batch (paper: VTAB test splits of up to 26k images at 224 px).

Both the best accuracy over the evaluated epochs (what SPT's and NOAH's code report) and the last-epoch accuracy are
returned, so a chapter can say which is which; on a GPU also the peak memory of training. With a validation set the
loop instead selects the epoch that scores best on validation, puts its weights back and scores the test split once
(model selection that does not look at the test split). Models that need their own optimiser groups (PE-CLIP:
adapters and prompts at different rates) pass them as `param_groups`; `score` turns predictions into the metrics a
chapter reports (accuracy, or UAR/WAR). Precision, accumulation and DDP under a distributed launcher come from the
engine: the effective batch, the number of steps and the results stay those of one process.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from . import engine
from .engine import TrainSpec
from .eval import accuracy
from .transforms import preprocess_batch


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
        return preprocess_batch(self.transform, [np.asarray(self.images[int(i)]) for i in idx]), self.labels[list(idx)]


def labels_of(data: Dataset) -> torch.Tensor:
    return data.tensors[1] if hasattr(data, "tensors") else data.labels


class _Shard:
    """Process `index` of `count` takes every `count`-th example of each batch (DDP with the batch split)."""

    def __init__(self, sampler: BatchSampler, index: int, count: int):
        self.sampler, self.index, self.count = sampler, index, count

    def __iter__(self):
        for batch in self.sampler:
            yield batch[self.index::self.count]

    def __len__(self) -> int:
        return len(self.sampler)


def batches(data: Dataset, batch_size: int, generator: torch.Generator | None = None, num_workers: int = 0,
            shard: tuple[int, int] = (0, 1)):
    """Batches of `data` (shuffled with `generator`, else in order), each fetched by one list-indexed call; with
    `shard=(i, n)`, process i of n fetches only its share of every batch (the order is the same on every process)."""
    order = RandomSampler(data, generator=generator) if generator is not None else SequentialSampler(data)
    sampler = BatchSampler(order, batch_size, drop_last=False)
    return DataLoader(data, sampler=_Shard(sampler, *shard) if shard[1] > 1 else sampler, batch_size=None,
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


def accuracy_score(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"acc": accuracy(pred, labels)}


def check_targets(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`logits` when every label in `y` is one of its classes; else an error with the head's size and the labels'."""
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= logits.shape[-1]:
        raise ValueError(f"labels run from {low} to {high}, but the model's head gives {logits.shape[-1]} classes: "
                         f"build the head for {high + 1} classes (num_classes) or keep only labels 0-"
                         f"{logits.shape[-1] - 1}")
    return logits


def fit_classifier(model: nn.Module, train: Dataset, test: Dataset, cfg: TrainSpec | None = None,
                   show_progress: bool = False, desc: str = "fine-tune", *, val: Dataset | None = None,
                   param_groups: list[dict] | None = None,
                   score: Callable[[np.ndarray, np.ndarray], dict[str, float]] = accuracy_score) -> dict:
    """Train the parameters of `model` that require grad on `train`; scores on `test` (and `val`), losses, timings.

    `score(pred, labels)` gives named metrics in %. Without `val`: "best" and "last", the first metric on test over
    the evaluated epochs. With `val`: "selected", the test scores of the epoch whose first validation metric is best
    (and its number), with that epoch's weights put back into `model`. `param_groups`: optimiser groups (each with
    its own "lr"); default all trainable parameters at `cfg.lr`, without weight decay on `cfg.no_decay`'s names."""
    from timm.data import Mixup
    cfg = cfg or TrainSpec()
    for name, part in (("train", train), ("test", test), ("val", val)):
        if part is not None and len(part) == 0:
            raise ValueError(f"the {name} set is empty: give at least one labelled example")
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    n_classes = int(labels_of(train).max()) + 1
    mix = Mixup(mixup_alpha=0.4, cutmix_alpha=0.0, prob=cfg.mixup, num_classes=n_classes) if cfg.mixup else None
    y_test = labels_of(test).numpy()
    kept = None   # with `val`: the trainable weights of the epoch that scores best on validation so far

    def data(gen, shard):
        return batches(train, cfg.batch_size, gen, cfg.num_workers, shard)

    def loss(m, batch):
        dev = next(m.parameters()).device
        x, y = batch[0].to(dev), batch[1].to(dev)
        if mix is not None and len(y) % 2 == 0:   # timm's Mixup pairs the batch with its reverse
            x, soft = mix(x, y)
            return torch.sum(-soft * F.log_softmax(check_targets(m(x), y), dim=1), dim=1).mean()
        return F.cross_entropy(check_targets(m(x), y), y)

    def evaluate(epoch: int, row: dict) -> None:
        nonlocal kept
        if not cfg.evaluates(epoch):
            return
        if val is None:
            row.update({f"test_{k}": v for k, v in score(predict(model, test, num_workers=cfg.num_workers),
                                                         y_test).items()})
            return
        v_scores = score(predict(model, val, num_workers=cfg.num_workers), labels_of(val).numpy())
        row.update({f"val_{k}": v for k, v in v_scores.items()})
        if kept is None or next(iter(v_scores.values())) > kept[0]:
            kept = (next(iter(v_scores.values())), epoch + 1, {n: p.detach().clone() for n, p in params})

    run = engine.train(model, cfg, data, loss, groups=param_groups, on_epoch=evaluate, show_progress=show_progress,
                desc=desc)
    history = run["history"]
    out = {k: run[k] for k in ("history", "s_per_step", "s_per_epoch", "peak_mem_mb")}
    if val is None:
        evaluated = [h for h in history if any(k.startswith("test_") for k in h)]
        first = next(k for k in evaluated[-1] if k.startswith("test_"))
        out.update(best=max(h[first] for h in evaluated), last=evaluated[-1][first])
    else:   # the first epoch with the best validation score: its weights back, then the test split once
        with torch.no_grad():
            for n, p in params:
                p.copy_(kept[2][n])
        out["selected"] = score(predict(model, test, num_workers=cfg.num_workers), y_test) | {"epoch": kept[1]}
    return out
