"""LoRA modules and adapters that compute their input again in the backward pass: the same outputs, draws and
gradients as peft's LoRA and the plain adapter, with and without block checkpointing, and less kept for the backward
pass by exactly the copies they no longer keep."""
import copy
from contextlib import nullcontext

import pytest
import timm
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from clipadapt.bench import training_memory
from clipadapt.engine import block_checkpointing
from clipadapt.methods.dropout import mask_free_dropout
from clipadapt.methods.recompute import RecomputedDown, SeqAdapter, recompute_lora_input, recompute_lora_inputs
from clipadapt.methods.spt import add_structured

TARGETS = ["blocks.0.attn.qkv", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2", "blocks.1.mlp.fc2", "blocks.1.attn.proj"]


def _vit(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=48,
                             depth=2, num_heads=4, num_classes=5)


def _lora_pair():
    """The same ViT with peft's LoRA as it is, and with the inputs recomputed; B is made non-zero so every gradient
    is."""
    ref = _vit()
    ref.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, lora_dropout=0.2, target_modules=TARGETS), ref)
    for n, p in ref.named_parameters():
        if "lora_B" in n:
            nn.init.normal_(p, std=0.1)
    ours = copy.deepcopy(ref)
    assert recompute_lora_inputs(ours, TARGETS) == 4   # qkv, fc1, fc2 twice; proj reads a reshaped copy
    return ref, ours


def _step(model, x, seed=1):
    torch.manual_seed(seed)
    x = x.clone().requires_grad_(True)
    out = model(x)
    (out * torch.linspace(-1, 1, out.shape[-1])).square().sum().backward()
    after = torch.rand(3)   # the random stream after the step
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    grads["input"] = x.grad.clone()
    model.zero_grad(set_to_none=True)
    return out.detach(), grads, after


@pytest.mark.parametrize("checkpointing,bf16", [(False, False), (True, False), (False, True)])
def test_lora_outputs_draws_and_gradients_equal_peft(checkpointing, bf16):
    ref, ours = _lora_pair()
    x = torch.randn(3, 3, 32, 32)
    with (block_checkpointing(ours) if checkpointing else nullcontext(),
          torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)):
        (o1, g1, r1), (o2, g2, r2) = _step(ref.train(), x), _step(ours.train(), x)
    assert torch.equal(o1, o2) and torch.equal(r1, r2)
    assert g1.keys() == g2.keys() and any("lora_A" in n for n in g1)
    for n in g1:
        assert torch.equal(g1[n], g2[n]), n
    assert set(ref.state_dict()) == set(ours.state_dict())
    assert any(isinstance(m, RecomputedDown) for m in ours.modules())


def test_lora_keeps_no_copy_of_its_input():
    ref, ours = _lora_pair()
    mask_free_dropout(ref), mask_free_dropout(ours)   # so that the difference is the inputs, not also torch's masks
    x = torch.randn(3, 3, 32, 32)
    kept = [training_memory(m.train(), lambda m=m: m(x).square().sum())["activations_mb"] * 2**20 for m in (ref, ours)]
    tokens = 3 * (16 + 1)
    # peft keeps dropout(input) of each LoRA module: 48 wide before fc1, 192 before fc2 (twice); block 0's qkv reads
    # a LayerNorm whose input needs no gradient (nothing before it trains), so that LayerNorm keeps nothing to
    # recompute from and the LoRA module keeps its input as before
    assert kept[0] - kept[1] == 4 * tokens * (48 + 192 + 192)


def test_lora_in_eval_and_without_its_producer_runs_as_before():
    ref, ours = _lora_pair()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ref.eval()(x), ours.eval()(x))
    # called on a tensor the producer did not make (a copy), the layer is peft's Linear after dropout
    layer, peft_layer = ours.get_submodule("blocks.0.mlp.fc1").train(), ref.get_submodule("blocks.0.mlp.fc1").train()
    h = torch.randn(2, 5, 48, requires_grad=True)
    torch.manual_seed(4)
    a = layer(h)
    torch.manual_seed(4)
    assert torch.equal(a, peft_layer(h))


def test_a_layer_that_is_not_lora_is_refused():
    with pytest.raises(ValueError, match="not a peft LoRA layer; inject LoRA first"):
        recompute_lora_input(nn.Linear(3, 3), nn.LayerNorm(3))


def _adapter_pair(p=0.2):
    torch.manual_seed(0)
    plain = SeqAdapter(nn.Linear(12, 20), rank=3, dropout=p)
    nn.init.normal_(plain.up.weight, std=0.3)
    nn.init.normal_(plain.up.bias, std=0.3)
    return plain


def _adapter_reference(a, x):   # the adapter as autograd keeps it
    y = a.base(x)
    return y + a.up(nn.functional.gelu(a.down(a.drop(y))))


@pytest.mark.parametrize("p", [0.0, 0.2])
def test_adapter_outputs_draws_and_gradients_equal_autograds(p):
    a = _adapter_pair(p).train()
    x = torch.randn(4, 7, 12, requires_grad=True)
    results = []
    for fn in (lambda: _adapter_reference(a, x), lambda: a(x)):
        torch.manual_seed(5)
        out = fn()
        out.sin().sum().backward()
        results.append((out.detach(), torch.rand(2), x.grad.clone(),
                        [q.grad.clone() for q in (a.base.weight, a.down.weight, a.down.bias, a.up.weight, a.up.bias)]))
        x.grad = None
        a.zero_grad(set_to_none=True)
    (o1, r1, gx1, gp1), (o2, r2, gx2, gp2) = results
    assert "SeqAdapterFn" in type(a(x).grad_fn).__name__
    assert torch.equal(o1, o2) and torch.equal(r1, r2)
    # the input comes back as out - up(GELU(u)): equal to float rounding
    torch.testing.assert_close(gx1, gx2, rtol=1e-5, atol=1e-6)
    for g1, g2 in zip(gp1, gp2):
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6)


def test_adapter_before_a_gelu_keeps_no_copy_of_its_input(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(6, 10, 16, requires_grad=True)
    model = nn.Sequential(SeqAdapter(nn.Linear(16, 64), rank=4, dropout=0.1), nn.GELU(), nn.Linear(64, 16))
    model.requires_grad_(False)
    model[0].down.requires_grad_(True)
    model[0].up.requires_grad_(True)
    mask_free_dropout(model)   # the reference keeps no mask either
    ours = training_memory(model.train(), lambda: model(x).sum())["activations_mb"] * 2**20
    monkeypatch.setattr(SeqAdapter, "forward", _adapter_reference)
    plain = training_memory(model.train(), lambda: model(x).sum())["activations_mb"] * 2**20
    # no longer kept: dropout(y), 64 wide (the GELU keeps the output), and GELU(u), 4 wide (recomputed from u)
    assert plain - ours == 60 * (64 + 4) * 4


def test_add_structured_recomputes_where_a_producer_is_known():
    model = _vit()
    model.requires_grad_(False)
    add_structured(model, ["blocks.0.mlp.fc2", "blocks.0.attn.proj"], "lora", rank=2)
    assert isinstance(model.get_submodule("blocks.0.mlp.fc2.lora_A.default"), RecomputedDown)
    assert type(model.get_submodule("blocks.0.attn.proj.lora_A.default")) is nn.Linear


def test_fc2_keeps_its_input_when_something_between_the_gelu_and_it_changes_the_tensor():
    model = _vit()
    model.requires_grad_(False)
    model.blocks[0].mlp.drop1 = nn.Dropout(0.1)   # the GELU's output is no longer fc2's input
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=TARGETS[:4]), model)
    assert recompute_lora_inputs(model, TARGETS[:4]) == 3
    assert type(model.get_submodule("blocks.0.mlp.fc2.lora_A.default")) is nn.Linear
    assert isinstance(model.get_submodule("blocks.1.mlp.fc2.lora_A.default"), RecomputedDown)
