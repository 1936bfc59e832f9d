"""One supervised fine-tuning loop for every PEFT method of the book: AdamW over what requires grad, timm's cosine
schedule with linear warm-up (per epoch, as SPT's VTAB runs), no augmentation, test accuracy at set epochs.

Data come as datasets that take a list of indices and return a whole batch: a `torch.utils.data.TensorDataset` of
preprocessed images (ci: a few thousand small images, preprocessed once and shared by every run) or an `ImageSet`
that reads and transforms image files per batch (paper: VTAB test splits of up to 26k images at 224 px).

Both the best accuracy over the evaluated epochs (what SPT's and NOAH's code report) and the last-epoch accuracy are
returned, so a chapter can say which is which; on a GPU also the peak memory of training. With a validation set the
loop instead selects the epoch that scores best on validation, puts its weights back and scores the test split once
(model selection that does not look at the test split). Models that need their own optimiser groups (PE-CLIP: adapters and prompts at different rates)
pass them as `param_groups`; `score` turns predictions into the metrics a chapter reports (accuracy, or UAR/WAR).

The loop runs through Hugging Face `accelerate`: mixed precision and gradient accumulation come from the config, and
under a distributed launcher (`accelerate launch` on several GPUs or machines, `torchrun`) the model is wrapped in DDP
and every process reads its share of each batch, so the effective batch, the number of steps and the results stay
those of one process. In a plain single process nothing is wrapped and the numbers are those of a bare loop.
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
    cosine_epochs: int | None = None   # length of the cosine (timm's t_initial); None: `epochs`
    mixup: float = 0.0       # probability of mixup per batch (timm's Mixup, alpha 0.4 as PE-CLIP); 0: off
    seed: int = 0
    mixed_precision: str = "no"   # accelerate's "no", "fp16" or "bf16" (a GPU's autocast)
    grad_accum: int = 1      # batches whose gradients add up before one optimiser step (accelerate's accumulation)

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
        from .transforms import preprocess_batch
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


def distributed() -> bool:
    """Whether this process was started by a distributed launcher (`accelerate launch`, `torchrun`) with others."""
    import os
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def accelerator(device: torch.device | str, mixed_precision: str = "no", grad_accum: int = 1):
    """accelerate's Accelerator for a model on `device`: the launcher's process and device under a distributed
    launcher (`accelerate launch`, `torchrun`), else this process on `device` (the CPU stays the CPU).

    accelerate keeps one state per process and refuses a second Accelerator with another device or precision; a
    plain process (a notebook kernel) starts a fresh state on every call, so loops with different settings can run
    one after the other."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DistributedDataParallelKwargs
    if not distributed():
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return Accelerator(cpu=torch.device(device).type == "cpu", mixed_precision=mixed_precision,
                       gradient_accumulation_steps=grad_accum,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def fit_classifier(model: nn.Module, train: Dataset, test: Dataset, cfg: FitConfig | None = None,
                   show_progress: bool = False, desc: str = "fine-tune", *, val: Dataset | None = None,
                   param_groups: list[dict] | None = None,
                   score: Callable[[np.ndarray, np.ndarray], dict[str, float]] = accuracy_score) -> dict:
    """Train the parameters of `model` that require grad on `train`; scores on `test` (and `val`), losses, timings.

    `score(pred, labels)` gives named metrics in %. Without `val`: "best" and "last", the first metric on test over
    the evaluated epochs. With `val`: "selected", the test scores of the epoch whose first validation metric is best
    (and its number), with that epoch's weights put back into `model`. `param_groups`: AdamW groups (each with its
    own "lr"); default all trainable parameters at `cfg.lr`, without weight decay on SPT's NO_DECAY names."""
    from timm.data import Mixup
    from timm.scheduler import CosineLRScheduler
    cfg = cfg or FitConfig()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter of the model requires grad")
    seed_everything(cfg.seed)
    if param_groups is None:
        param_groups = [{"params": [p for n, p in params if not any(k in n for k in NO_DECAY)],
                         "weight_decay": cfg.weight_decay},
                        {"params": [p for n, p in params if any(k in n for k in NO_DECAY)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in param_groups if g["params"]], lr=cfg.lr)
    sched = CosineLRScheduler(opt, t_initial=cfg.cosine_epochs or cfg.epochs, lr_min=cfg.min_lr,
                              warmup_t=cfg.warmup_epochs, warmup_lr_init=cfg.warmup_lr, warmup_prefix=False)
    n_classes = int(labels_of(train).max()) + 1
    mix = Mixup(mixup_alpha=0.4, cutmix_alpha=0.0, prob=cfg.mixup, num_classes=n_classes) if cfg.mixup else None
    acc = accelerator(next(model.parameters()).device, cfg.mixed_precision, cfg.grad_accum)
    dev, cuda = acc.device, acc.device.type == "cuda"
    train_model, opt = acc.prepare(model, opt) if acc.num_processes > 1 else (model.to(dev), acc.prepare(opt))
    opt.zero_grad(set_to_none=True)   # gradients left by an earlier pass (e.g. SPT's sensitivity) must not count
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    g = torch.Generator().manual_seed(cfg.seed)
    y_test = labels_of(test).numpy()
    history, steps, t_train = [], 0, 0.0
    kept = None   # with `val`: the trainable weights of the epoch that scores best on validation so far
    for epoch in progress(range(cfg.epochs), desc=desc, disable=not show_progress):
        sched.step(epoch)
        model.train()
        t0, losses = time.perf_counter(), []
        for x, y in batches(train, cfg.batch_size, g, cfg.num_workers, (acc.process_index, acc.num_processes)):
            x, y = x.to(dev), y.to(dev)
            with acc.accumulate(train_model), acc.autocast():
                if mix is not None and len(y) % 2 == 0:   # timm's Mixup pairs the batch with its reverse
                    x, soft = mix(x, y)
                    loss = torch.sum(-soft * F.log_softmax(train_model(x), dim=1), dim=1).mean()
                else:
                    loss = F.cross_entropy(train_model(x), y)
                acc.backward(loss)
                opt.step()        # with accumulation, accelerate steps and clears only on the last batch of a group
                opt.zero_grad(set_to_none=True)
            losses.append(acc.reduce(loss.detach(), "mean").item())
            steps += 1
        t_train += time.perf_counter() - t0
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses))}
        if cfg.evaluates(epoch) and val is None:
            row.update({f"test_{k}": v for k, v in score(predict(model, test, num_workers=cfg.num_workers), y_test).items()})
        elif cfg.evaluates(epoch):   # select on validation; keep the trainable weights of the best epoch so far
            v_scores = score(predict(model, val, num_workers=cfg.num_workers), labels_of(val).numpy())
            row.update({f"val_{k}": v for k, v in v_scores.items()})
            if kept is None or next(iter(v_scores.values())) > kept[0]:
                kept = (next(iter(v_scores.values())), epoch + 1, {n: p.detach().clone() for n, p in params})
        history.append(row)
    out = {"history": history, "s_per_step": t_train / max(steps, 1), "s_per_epoch": t_train / cfg.epochs,
           "peak_mem_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else float("nan")}
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
