"""LoRA modules and adapters that compute their input again in the backward pass instead of keeping a copy of it.

The gradient of LoRA's down-projection A is the sum over tokens of g^T dropout(x): autograd keeps dropout(x), a copy
of the layer's whole input, which is 3,072 wide in front of a ViT's fc2. In a ViT block that input is a cheap
function of a tensor autograd keeps anyway: the output of LayerNorm `norm1` (read by `attn.qkv`) or `norm2` (read by
`mlp.fc1`) comes from the LayerNorm's input, which the LayerNorm keeps for its own backward pass, and the output of
the GELU (read by `mlp.fc2`) from the GELU's input, which the GELU keeps. `recompute_lora_input` makes such a LoRA
module keep only that tensor (one storage shared with the LayerNorm or GELU) and compute its input again in the
backward pass: one LayerNorm or GELU, and the dropout drawn again from the random state stored in the forward pass.

A sequential adapter out = y + up(GELU(down(dropout(y)))) (`SeqAdapterFn`) keeps its output instead of its input
and gets the input back as y = out - up(GELU(u)), from u = down(dropout(y)), which is r wide. After fc1 the output
is what the GELU that follows keeps anyway, so the adapter's 3,072-wide input is not kept a second time; elsewhere
the output takes the input's place, the same size.

The forward pass is unchanged (same operations, same random draws). LoRA's gradients equal autograd's bit for bit
on a CPU (the backward pass repeats the forward operations from bit-equal inputs); the adapter's equal them to float
rounding, since out - up(...) rounds (exact while `up` is zero, as it starts). Tests check both and the memory.
Each layer's recomputed input exists only while that layer's backward pass runs.
"""
from __future__ import annotations

import weakref
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from .dropout import REPLAYABLE, redrawn_dropout, replayed_rng, rng_state

# where the input of a LoRA module on a timm ViT block's Linear comes from: target -> the module whose output it is
PRODUCERS = {"attn.qkv": "norm1", "mlp.fc1": "norm2", "mlp.fc2": "mlp.act"}


def _autocast_state(device: torch.device) -> tuple[str, bool, torch.dtype]:
    kind = device.type
    return kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)


def _replay(state: torch.Tensor | None, device: torch.device):
    return nullcontext() if state is None else replayed_rng(state, device)


def _leaf(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().requires_grad_(True)


class _LoRADownFn(torch.autograd.Function):
    """y = dropout(x) A^T keeping `source` (x = producer(source)) instead of dropout(x)."""

    @staticmethod
    def forward(ctx, x, source, weight, p, producer):
        ctx.p, ctx.producer, ctx.autocast = p, producer, _autocast_state(x.device)
        ctx.state = rng_state(x.device) if p > 0 else None
        ctx.like = (x.shape, x.stride(), x.dtype)
        ctx.save_for_backward(source, weight)
        return F.linear(F.dropout(x, p, True), weight)   # p = 0: x itself

    @staticmethod
    def backward(ctx, g):
        source, weight = ctx.saved_tensors
        kind, enabled, dtype = ctx.autocast
        with torch.autocast(kind, dtype=dtype, enabled=enabled):
            with torch.no_grad():
                x = ctx.producer(source)
            if (x.shape, x.stride(), x.dtype) != ctx.like:
                raise RuntimeError(f"LoRA input recomputed as {tuple(x.shape)} {x.dtype}, not as in the forward pass "
                                   f"({tuple(ctx.like[0])} {ctx.like[2]}): was the producer module changed between "
                                   "the forward and the backward pass?")
            x, w = _leaf(x), _leaf(weight)
            with torch.enable_grad(), _replay(ctx.state, x.device):
                y = F.linear(F.dropout(x, ctx.p, True), w)
        gx, gw = torch.autograd.grad(y, (x, w), g)
        return gx, None, gw, None, None


class RecomputedDown(nn.Linear):
    """LoRA's down-projection `lora_A` with its dropout inside (`drop_p`): while training it keeps the input of the
    module whose output it reads (`producer`, seen by a forward hook) and computes its own input again in the
    backward pass. Where its input is not that module's last output, it is an `nn.Linear` after dropout."""

    drop_p: float = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        producer = self.__dict__.get("_producer")
        source = _source_of(producer, x) if producer is not None else None
        if source is None or not self.training or x.device.type not in REPLAYABLE:
            return super().forward(redrawn_dropout(x, self.drop_p, self.training))
        return _LoRADownFn.apply(x, source, self.weight, self.drop_p, producer.forward)


_LAST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # producer -> weak refs to its last input, output


def _remember(module: nn.Module, args: tuple, out) -> None:
    """Forward hook of a producer: weak references to its input and output while a backward pass may follow."""
    keep = (torch.is_grad_enabled() and args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor)
            and out.requires_grad)
    _LAST[module] = (weakref.ref(args[0]), weakref.ref(out)) if keep else None


def _source_of(producer: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The producer's last input when `x` is its last output (the same tensor, not a copy), else None."""
    refs = _LAST.get(producer)
    if refs is None:
        return None
    source, out = refs[0](), refs[1]()
    return source if out is x and source is not None else None


def recompute_lora_input(layer: nn.Module, producer: nn.Module) -> int:
    """Make every LoRA adapter of the peft `layer` compute its input again from `producer`'s input in the backward
    pass; `layer`'s input must be `producer`'s output as is (elsewhere the layer runs as before). In place; returns
    the adapters changed. The state dict is unchanged."""
    if not hasattr(layer, "lora_A") or not hasattr(layer, "lora_dropout"):
        raise ValueError(f"{type(layer).__name__} is not a peft LoRA layer; inject LoRA first")
    if _remember not in producer._forward_hooks.values():
        producer.register_forward_hook(_remember)
    changed = 0
    for name, down in layer.lora_A.items():
        variant = name in getattr(layer, "lora_variant", {})   # DoRA and other variants compute their own way
        if type(down) not in (nn.Linear, RecomputedDown) or down.bias is not None or variant:
            continue
        drop = layer.lora_dropout[name]
        if not isinstance(drop, (nn.Dropout, nn.Identity)):
            continue   # a dropout of another kind stays where it is, and so does the copy it makes
        down.__class__ = RecomputedDown
        down.drop_p = drop.p if isinstance(drop, nn.Dropout) else down.drop_p
        down.__dict__["_producer"] = producer   # not a submodule: no second entry in the state dict
        layer.lora_dropout[name] = nn.Identity()
        changed += 1
    return changed


def recompute_lora_inputs(model: nn.Module, targets: list[str]) -> int:
    """`recompute_lora_input` for each named LoRA layer of a timm ViT whose input a block's LayerNorm or GELU produces
    (`PRODUCERS`: qkv, fc1 and fc2; the attention's output projection reads a reshaped copy and is left as it is).
    Returns the adapters changed."""
    changed = 0
    for name in targets:
        for suffix, producer in PRODUCERS.items():
            if name == suffix or name.endswith("." + suffix):
                block = name[: -len(suffix)]
                mlp = model.get_submodule(block + "mlp") if suffix == "mlp.fc2" else None
                if mlp is not None and not (isinstance(getattr(mlp, "norm", None), nn.Identity)
                                            and getattr(getattr(mlp, "drop1", None), "p", 1) == 0):
                    continue   # something between the GELU and fc2 changes the tensor
                changed += recompute_lora_input(model.get_submodule(name), model.get_submodule(block + producer))
    return changed


class SeqAdapterFn(torch.autograd.Function):
    """out = y + up(GELU(down(dropout(y)))), keeping out and u = down(dropout(y)) instead of dropout(y)."""

    @staticmethod
    def forward(ctx, y, p, wd, bd, wu, bu):
        ctx.p, ctx.autocast = p, _autocast_state(y.device)
        ctx.state = rng_state(y.device) if p > 0 else None
        u = F.linear(F.dropout(y, p, True), wd, bd)
        out = y + F.linear(F.gelu(u), wu, bu)
        ctx.save_for_backward(out, u, wd, bd, wu, bu)
        return out

    @staticmethod
    def backward(ctx, g):
        out, u, wd, bd, wu, bu = ctx.saved_tensors
        kind, enabled, dtype = ctx.autocast
        with torch.autocast(kind, dtype=dtype, enabled=enabled):
            with torch.no_grad():
                y = (out - F.linear(F.gelu(u), wu, bu)).to(out.dtype)
            leaves = [_leaf(t) for t in (y, wd, bd, wu, bu)]
            y_, wd_, bd_, wu_, bu_ = leaves
            with torch.enable_grad(), _replay(ctx.state, y.device):
                u_ = F.linear(F.dropout(y_, ctx.p, True), wd_, bd_)
                out_ = y_ + F.linear(F.gelu(u_), wu_, bu_)
        grads = torch.autograd.grad(out_, [t for t in leaves if t is not None], g)
        it = iter(grads)
        grads = [None if t is None else next(it) for t in leaves]
        grads.insert(1, None)   # the rate
        return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad))


class SeqAdapter(nn.Module):
    """A Linear followed by a sequential bottleneck adapter on its output: y + up(GELU(down(dropout(y))))."""

    def __init__(self, base: nn.Linear, rank: int = 8, dropout: float = 0.1):
        super().__init__()
        self.base = base
        self.down = nn.Linear(base.out_features, rank)
        self.up = nn.Linear(rank, base.out_features)
        self.drop = nn.Dropout(dropout)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        params = (self.down.weight, self.down.bias, self.up.weight, self.up.bias)
        if (self.training and torch.is_grad_enabled() and y.device.type in REPLAYABLE
                and (y.requires_grad or any(p.requires_grad for p in params))):
            # keeps its output instead of its input: the same values and draws
            return SeqAdapterFn.apply(y, self.drop.p, *params)
        return y + self.up(F.gelu(self.down(self.drop(y))))
