"""Dropout without a kept mask: the same draws, outputs and gradients as nn.Dropout, and no mask among the tensors
autograd keeps."""
import pytest
import torch
from torch import nn

from clipadapt.bench import training_memory
from clipadapt.methods.dropout import MaskFreeDropout, mask_free_dropout


def _step(drop: nn.Module, x: torch.Tensor, lin: nn.Linear):
    torch.manual_seed(3)
    x = x.clone().requires_grad_(True)
    out = lin(drop(x))
    (out * torch.linspace(-1, 1, out.shape[-1])).square().sum().backward()
    after = torch.rand(3)   # the random stream after the step
    grads = (x.grad.clone(), lin.weight.grad.clone())
    lin.zero_grad(set_to_none=True)
    return out.detach(), grads, after


@pytest.mark.parametrize("transposed", [False, True])
def test_same_draws_outputs_and_gradients_as_torch_dropout(transposed):
    torch.manual_seed(0)
    lin = nn.Linear(16, 5)
    x = torch.randn(16, 12).T if transposed else torch.randn(12, 16)   # a transposed view draws in memory order
    (o1, g1, r1), (o2, g2, r2) = _step(nn.Dropout(0.3), x, lin), _step(MaskFreeDropout(0.3), x, lin)
    assert torch.equal(o1, o2) and torch.equal(r1, r2)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)
    assert (o2 != _step(MaskFreeDropout(0.3), x + 0, lin)[0]).sum() == 0   # same seed, same numbers


def test_no_mask_is_kept_for_the_backward_pass():
    x = torch.randn(64, 32, requires_grad=True)
    lin = nn.Linear(32, 8)
    kept = {}
    for name, drop in (("torch", nn.Dropout(0.1)), ("ours", MaskFreeDropout(0.1))):
        model = nn.Sequential(drop, lin)
        kept[name] = training_memory(model, lambda m=model: m(x).sum())["activations_mb"] * 2**20
    assert kept["ours"] == x.numel() * 4            # the Linear's input only
    assert kept["torch"] >= kept["ours"] + x.numel()   # torch also keeps the mask (a float per element on a CPU)


def test_eval_mode_and_rate_zero_pass_the_input_through_and_the_swap_counts():
    x = torch.randn(4, 6, requires_grad=True)
    assert torch.equal(MaskFreeDropout(0.5).eval()(x), x)
    assert torch.equal(MaskFreeDropout(0.0)(x), x)
    model = nn.Sequential(nn.Dropout(0.1), nn.Linear(6, 6), nn.Dropout(0.0), nn.Sequential(nn.Dropout(0.2)))
    assert mask_free_dropout(model) == 2
    assert [type(m).__name__ for m in model.modules() if isinstance(m, nn.Dropout)] == [
        "MaskFreeDropout", "Dropout", "MaskFreeDropout"]
    assert model[0].p == 0.1 and model[3][0].p == 0.2


def test_a_device_whose_generator_it_cannot_restore_keeps_torch_dropout():
    x = torch.randn(4, 6, device="meta", requires_grad=True)   # stands in for mps / xpu
    assert "Redrawn" not in type(MaskFreeDropout(0.5)(x).grad_fn).__name__
    y = torch.randn(4, 6, requires_grad=True)
    assert "Redrawn" in type(MaskFreeDropout(0.5)(y).grad_fn).__name__
