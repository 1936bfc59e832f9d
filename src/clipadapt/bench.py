"""Trainable parameters, peak memory and time per step, measured the same way for every method."""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from typing import Callable, Sequence

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


def training_memory(model: nn.Module, loss_fn: Callable[[], torch.Tensor],
                    blocks: Sequence[nn.Module] = ()) -> dict[str, float]:
    """The memory one training step of `model` holds, measured on any device (MiB): its weights, the gradients and
    Adam's two moments of what trains, and the activations autograd saves for the backward pass of `loss_fn()`
    (recorded by a saved-tensors hook; tensors counted once; saved weights and buffers are not counted again, the
    weights include the buffers).

    With `blocks` (the modules activation checkpointing recomputes, `engine.checkpointed_blocks`) it also gives what
    the same step keeps with checkpointing, from the same pass: the tensors saved outside the blocks, every block's
    inputs (checkpointing holds them to recompute the block), and the largest block's own saved tensors, which exist
    again while that block is recomputed in the backward pass (`checkpointed_activations_mb`, `checkpointed_total_mb`).

    Unlike a process's peak RSS this separates methods within one run on a CPU; on a GPU compare it with
    `torch.cuda.max_memory_allocated`, which also counts allocator slack and temporary buffers.
    """
    params = {p.data_ptr() for p in [*model.parameters(), *model.buffers()]}
    saved: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], int] = {}        # saved tensor -> index of the block it was saved in (-1: outside)
    inputs: list[dict[tuple[int, int], int]] = [{} for _ in blocks]
    current = [-1]

    def key(t: torch.Tensor) -> tuple[int, int]:
        return t.data_ptr(), t.numel()

    def enter(i, args, kwargs):
        for t in [*args, *kwargs.values()]:
            if isinstance(t, torch.Tensor) and t.data_ptr() not in params:
                inputs[i][key(t)] = t.numel() * t.element_size()
        current[0] = i

    def pack(t: torch.Tensor):
        if t.data_ptr() not in params and key(t) not in saved:
            saved[key(t)] = t.numel() * t.element_size()
            where[key(t)] = current[0]
        return t
    handles = [h for i, b in enumerate(blocks) for h in (
        b.register_forward_pre_hook(lambda m, a, kw, i=i: enter(i, a, kw), with_kwargs=True),
        b.register_forward_hook(lambda m, a, o: current.__setitem__(0, -1)))]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = loss_fn()
    finally:
        for h in handles:
            h.remove()
    loss.backward()
    model.zero_grad(set_to_none=True)
    mib = 2 ** 20
    weights = sum(p.numel() * p.element_size() for p in [*model.parameters(), *model.buffers()]) / mib
    states = 3 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) / mib
    acts = sum(saved.values()) / mib
    out = {"weights_mb": weights, "grads_and_adam_mb": states, "activations_mb": acts,
           "total_mb": weights + states + acts}
    if blocks:
        used = set(where.values())   # a block that saves nothing (all frozen, no gradient through it) keeps nothing
        kept = {k: v for k, v in saved.items() if where[k] < 0}
        for i in used - {-1}:
            kept |= inputs[i]
        per_block = [sum(v for k, v in saved.items() if where[k] == i and k not in kept) for i in range(len(blocks))]
        ckpt = (sum(kept.values()) + max(per_block, default=0)) / mib
        out |= {"checkpointed_activations_mb": ckpt, "checkpointed_total_mb": weights + states + ckpt}
    return out
