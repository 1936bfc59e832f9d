"""Dropout that keeps no mask for the backward pass: the mask is drawn again from the random state of the forward pass.

torch's dropout keeps its mask until the backward pass (a byte per element on a GPU, a float on a CPU). In front of
a LoRA module or an adapter that mask is memory on top of the input the module keeps anyway. `MaskFreeDropout` keeps
the generator's state instead (16 bytes on a GPU, 5 KB on a CPU) and draws the same mask again in the backward pass:
the forward pass is torch's own dropout from the same state, so outputs, gradients and the random stream after the
step equal `nn.Dropout`'s (a test).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


REPLAYABLE = ("cpu", "cuda")   # devices whose generator state this module can store and restore


def rng_state(device: torch.device) -> torch.Tensor:
    """The state of the generator that dropout on `device` draws from (the CPU's or the CUDA device's)."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


@contextmanager
def replayed_rng(state: torch.Tensor, device: torch.device):
    """Within the context the generator of `device` starts again from `state` (from `rng_state`); on exit it is back
    where it was, so the draws made inside do not shift the random stream of the run."""
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else [], device_type=device.type if cuda else "cuda"):
        if cuda:
            torch.cuda.set_rng_state(state, device)
        else:
            torch.set_rng_state(state)
        yield


class _RedrawnDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p):
        ctx.p, ctx.state, ctx.like = p, rng_state(x.device), (x.shape, x.stride(), x.dtype, x.device)
        return F.dropout(x, p, True)

    @staticmethod
    def backward(ctx, g):
        shape, stride, dtype, device = ctx.like
        with replayed_rng(ctx.state, device):
            # laid out as the input was, so the draws fall on the same elements; gives mask / (1 - p)
            ones = torch.ones_like(torch.empty_strided(shape, stride, dtype=dtype, device=device))
            scale = F.dropout(ones, ctx.p, True)
        return g * scale, None


def redrawn_dropout(x: torch.Tensor, p: float, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """`F.dropout` (same rate, same draws) whose backward pass draws the mask again instead of keeping it."""
    # a generator whose state this can restore: the CPU's and CUDA's; elsewhere (mps, xpu) torch keeps the mask
    if (not training or p == 0 or not torch.is_grad_enabled() or not x.requires_grad
            or x.device.type not in REPLAYABLE):
        return F.dropout(x, p, training, inplace)
    return _RedrawnDropout.apply(x, p)


class MaskFreeDropout(nn.Dropout):
    """`nn.Dropout` (same rate, same draws) whose backward pass draws the mask again instead of keeping it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return redrawn_dropout(x, self.p, self.training, self.inplace)


def mask_free_dropout(model: nn.Module) -> int:
    """Make every `nn.Dropout` of `model` with a rate above zero a `MaskFreeDropout`, in place; returns how many."""
    found = [m for m in model.modules() if type(m) is nn.Dropout and m.p > 0]
    for m in found:
        m.__class__ = MaskFreeDropout
    return len(found)
