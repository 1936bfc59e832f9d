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
    if repeats < 1:
        raise ValueError(f"time_per_step needs repeats >= 1 (the median of the timed calls), got {repeats}")
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


def training_memory(model: nn.Module, loss_fn: Callable[[], torch.Tensor]) -> dict[str, float]:
    """The memory one training step of `model` holds, measured on any device (MiB): its weights, the gradients and
    Adam's two moments of what trains, and the activations autograd saves for the backward pass of `loss_fn()`
    (recorded by a saved-tensors hook; tensors counted once; saved weights are not counted again).

    Unlike a process's peak RSS this separates methods within one run on a CPU; on a GPU compare it with
    `torch.cuda.max_memory_allocated`, which also counts allocator slack and temporary buffers.
    """
    params = {p.data_ptr() for p in model.parameters()}
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor):
        key = (t.data_ptr(), t.numel())
        if t.data_ptr() not in params and key not in seen:
            seen[key] = t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    loss.backward()
    model.zero_grad(set_to_none=True)
    mib = 2 ** 20
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / mib
    states = 3 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) / mib
    acts = sum(seen.values()) / mib
    return {"weights_mb": weights, "grads_and_adam_mb": states, "activations_mb": acts,
            "total_mb": weights + states + acts}
