"""Sparse updates of a frozen Linear (SPT's unstructured part): the same outputs and gradients as the parametrization
W + scatter(delta), without the summed matrix among the tensors autograd keeps."""
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from clipadapt.bench import training_memory
from clipadapt.methods.sparse import SparseLinear, add_sparse


class _Scatter(nn.Module):   # the reference: a parametrization that adds the delta at fixed flat positions
    def __init__(self, index, delta):
        super().__init__()
        self.register_buffer("index", index)
        self.delta = nn.Parameter(delta.clone())

    def forward(self, w):
        return w.flatten().index_add(0, self.index, self.delta).view_as(w)


def _pair(bias_vector=False, seed=0):
    torch.manual_seed(seed)
    ref = nn.Linear(12, 7)
    ours = nn.Linear(12, 7)
    ours.load_state_dict(ref.state_dict())
    for m in (ref, ours):
        m.requires_grad_(False)
    w_idx, b_idx = torch.tensor([0, 5, 13, 40, 83]), torch.tensor([1, 6])
    w_delta, b_delta = torch.randn(5), torch.randn(2)
    parametrize.register_parametrization(ref, "weight", _Scatter(w_idx, w_delta))
    add_sparse(ours, "weight", w_idx).data.copy_(w_delta)
    if bias_vector:   # the bias trained fully (SPT's vector rule) beside the sparse weight
        ref.bias.requires_grad_(True)
        ours.bias.requires_grad_(True)
    else:
        parametrize.register_parametrization(ref, "bias", _Scatter(b_idx, b_delta))
        add_sparse(ours, "bias", b_idx).data.copy_(b_delta)
    return ref, ours


def _grads(model, x):
    x = x.clone().requires_grad_(True)
    out = model(x)
    (out * torch.linspace(-1, 1, out.shape[-1])).square().sum().backward()
    grads = {n.replace("parametrizations.", "").replace(".0.delta", "_delta"): p.grad
             for n, p in model.named_parameters() if p.requires_grad}
    return out.detach(), x.grad, grads


@pytest.mark.parametrize("bias_vector", [False, True])
def test_outputs_and_gradients_equal_the_parametrization(bias_vector):
    ref, ours = _pair(bias_vector)
    assert isinstance(ours, SparseLinear)
    x = torch.randn(3, 4, 12)
    (o1, gx1, g1), (o2, gx2, g2) = _grads(ref, x), _grads(ours, x)
    torch.testing.assert_close(o2, o1)
    torch.testing.assert_close(gx2, gx1)
    assert set(g2) == set(g1) == {"weight_delta", "bias" if bias_vector else "bias_delta"}
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], msg=name)
    torch.testing.assert_close(ours.effective("weight"), ref.weight)


def test_only_the_delta_trains_and_the_frozen_weight_stays():
    _, ours = _pair()
    before = ours.weight.detach().clone()
    opt = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=0.1)
    ours(torch.randn(8, 12)).square().sum().backward()
    opt.step()
    assert torch.equal(ours.weight, before) and ours.weight.grad is None
    changed = (ours.effective("weight") != before).flatten().nonzero().flatten().tolist()
    assert set(changed) <= {0, 5, 13, 40, 83} and changed


def test_the_summed_matrix_is_not_kept_for_the_backward_pass():
    big_in, big_out, tokens = 256, 512, 4
    ref, ours = nn.Linear(big_in, big_out), nn.Linear(big_in, big_out)
    for m in (ref, ours):
        m.requires_grad_(False)
    idx = torch.arange(0, big_in * big_out, 97)
    parametrize.register_parametrization(ref, "weight", _Scatter(idx, torch.zeros(len(idx))))
    add_sparse(ours, "weight", idx)
    x = torch.randn(tokens, big_in, requires_grad=True)   # inside a network: earlier layers train
    kept = {name: training_memory(m, lambda m=m: m(x).sum())["activations_mb"] * 2**20 for name, m in
            (("ref", ref), ("ours", ours))}
    assert kept["ours"] == x.numel() * 4                        # the layer input only
    assert kept["ref"] >= kept["ours"] + big_in * big_out * 4   # the parametrization also keeps W + scatter(delta)


@pytest.mark.parametrize("module, attr, index, message", [
    (nn.Conv2d(3, 4, 3), "weight", [0], "built for torch.nn.Linear"),
    (nn.Linear(3, 4, bias=False), "bias", [0], "weight or bias"),
    (nn.Linear(3, 4), "weight", [12], r"0\.\.11"),
])
def test_bad_sparse_requests_say_what_to_do(module, attr, index, message):
    with pytest.raises(ValueError, match=message):
        add_sparse(module, attr, torch.tensor(index))


def test_a_second_request_for_the_same_tensor_is_refused():
    lin = nn.Linear(3, 4)
    add_sparse(lin, "weight", torch.tensor([1]))
    with pytest.raises(ValueError, match="one call"):
        add_sparse(lin, "weight", torch.tensor([2]))


def test_only_the_input_columns_the_entries_read_are_kept():
    tokens, d_in, d_out = 6, 64, 32
    lin = nn.Linear(d_in, d_out).requires_grad_(False)
    cols = torch.tensor([3, 17, 40])
    idx = (torch.arange(d_out)[:, None] * d_in + cols).flatten()   # every row, three columns
    add_sparse(lin, "weight", idx)
    x = torch.randn(tokens, d_in, requires_grad=True)
    kept = training_memory(lin, lambda: lin(x).sum())["activations_mb"] * 2**20
    assert kept == tokens * len(cols) * 4
    assert lin.state_dict().keys() == {"weight", "bias", "weight_index", "weight_delta"}   # the columns are derived
