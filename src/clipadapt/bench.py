"""Trainable parameters, peak memory and time per step, measured the same way for every method."""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class ParamCount:
    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / max(self.total, 1)


def count_parameters(model: nn.Module) -> ParamCount:
    """Trainable (requires_grad) and total parameter counts; shared tensors are counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return ParamCount(trainable, total)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_per_step(step: Callable[[], object], *, warmup: int = 1, repeats: int = 5,
                  device: str | torch.device = "cpu") -> dict[str, float]:
    """Median seconds per call of `step` after `warmup` calls, and the peak memory it reached.

    On CUDA the peak is torch's allocator peak over the timed calls; on CPU it is the process peak RSS (MiB), which
    only grows, so compare methods in separate processes or by their increments.
    """
    dev = torch.device(device)
    for _ in range(warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    times.sort()
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else peak_rss_mb()
    return {"s_per_step": times[len(times) // 2], "peak_mb": peak}
