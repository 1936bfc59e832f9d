"""Sparse updates of a frozen Linear: y = x (W + scatter(dW))^T + (b + scatter(db)), trained at fixed entries only.

A parametrization W -> W + scatter(delta) is the short way to write this, but autograd then keeps the summed matrix
of every such Linear for the backward pass, a copy of the weights per step. This Function keeps only what the
gradients need: the indices and the input columns the tuned weight entries read. The gradient of entry (i, j) is
sum over tokens of g[:, i] x[:, j], so only the columns j that some tuned entry uses are kept (SPT's sensitive entries
gather in few columns), where full fine-tuning keeps the whole
input. The backward pass rebuilds the summed matrix for the input gradient and forms g^T x over the kept columns only.
Outputs and gradients equal the parametrization's (a test).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ATTRS = ("weight", "bias")


def summed(base: torch.Tensor, index: torch.Tensor | None, delta: torch.Tensor | None) -> torch.Tensor:
    """`base` with `delta` added at the flat positions `index` (a new tensor; `base` itself when there is no delta)."""
    if delta is None:
        return base
    return base.flatten().index_add(0, index, delta.to(base.dtype)).view_as(base)


class _SparseLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, w_delta, w_index, b_delta, b_index, w_cols, w_local):
        w, b = summed(weight, w_index, w_delta), None if bias is None else summed(bias, b_index, b_delta)
        need = ctx.needs_input_grad
        # the full weight's gradient needs every input column; the tuned entries only those they read
        ctx.columns = not need[1] and w_cols is not None and len(w_cols) < x.shape[-1]
        kept = None if not (need[1] or need[3]) else x[..., w_cols] if ctx.columns else x
        ctx.save_for_backward(kept, weight, w_delta, w_index, b_index, w_local)
        ctx.has_bias = bias is not None
        return F.linear(x, w.to(x.dtype), None if b is None else b.to(x.dtype))

    @staticmethod
    def backward(ctx, g):
        kept, weight, w_delta, w_index, b_index, w_local = ctx.saved_tensors
        need = ctx.needs_input_grad
        gx = gw = gb = gwd = gbd = None
        if need[0]:
            gx = g @ summed(weight, w_index, w_delta).to(g.dtype)
        if need[1] or need[3]:
            prod = g.reshape(-1, g.shape[-1]).T @ kept.reshape(-1, kept.shape[-1]).to(g.dtype)
            gw = prod if need[1] else None
            gwd = prod.flatten().index_select(0, w_local if ctx.columns else w_index) if need[3] else None
        if ctx.has_bias and (need[2] or need[5]):
            total = g.reshape(-1, g.shape[-1]).sum(0)
            gb = total if need[2] else None
            gbd = total.index_select(0, b_index) if need[5] else None
        return gx, gw, gb, gwd, None, gbd, None, None, None


class SparseLinear(nn.Linear):
    """An `nn.Linear` whose weight and/or bias also train at fixed flat positions: `<attr>_delta` (a parameter,
    zero at first) added at `<attr>_index` (a buffer). Made from an existing Linear in place by `add_sparse`."""

    def delta(self, attr: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return getattr(self, f"{attr}_delta", None), getattr(self, f"{attr}_index", None)

    def effective(self, attr: str) -> torch.Tensor:
        """The weight or bias the layer computes with: the frozen tensor plus its trained entries."""
        delta, index = self.delta(attr)
        return summed(getattr(self, attr), index, delta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (wd, wi), (bd, bi) = self.delta("weight"), self.delta("bias")
        cols, local = getattr(self, "weight_cols", None), getattr(self, "weight_local", None)
        return _SparseLinearFn.apply(x, self.weight, self.bias, wd, wi, bd, bi, cols, local)


def add_sparse(linear: nn.Module, attr: str, index: torch.Tensor) -> nn.Parameter:
    """Train the entries `index` (flat positions) of `linear`'s `attr` ("weight" or "bias") as a new zero-initialised
    parameter `<attr>_delta`; `linear` becomes a `SparseLinear` in place (same object, same frozen tensors)."""
    if type(linear) not in (nn.Linear, SparseLinear):
        raise ValueError(f"sparse updates are built for torch.nn.Linear layers, not {type(linear).__name__}; "
                         "allocate this tensor as a full vector or leave it frozen")
    if attr not in ATTRS or getattr(linear, attr) is None:
        raise ValueError(f"a Linear trains sparse entries of its weight or bias, not {attr!r}")
    if hasattr(linear, f"{attr}_delta"):
        raise ValueError(f"{attr} of this Linear already has sparse entries; give all of them in one call")
    index = torch.as_tensor(index, dtype=torch.long, device=getattr(linear, attr).device)
    if index.numel() and (index.min() < 0 or index.max() >= getattr(linear, attr).numel()):
        raise ValueError(f"sparse positions must lie in 0..{getattr(linear, attr).numel() - 1} for the {attr}")
    linear.__class__ = SparseLinear
    linear.register_buffer(f"{attr}_index", index)
    if attr == "weight":   # the input columns the entries read, and each entry's place in out x (those columns)
        cols, which = torch.unique(index % linear.in_features, return_inverse=True)
        linear.register_buffer("weight_cols", cols, persistent=False)
        linear.register_buffer("weight_local", index // linear.in_features * len(cols) + which, persistent=False)
    delta = nn.Parameter(torch.zeros(len(index), device=index.device))
    linear.register_parameter(f"{attr}_delta", delta)
    return delta
