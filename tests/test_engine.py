"""The one training engine: its spec refuses what it cannot run, its schedules are the libraries' curves, the loss
it records is the loss it trains on, and it is the only supervised training loop in the package."""
import math
import re
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from torch import nn

from clipadapt.engine import NO_DECAY, TrainSpec, param_groups, train, warmup_ticks

SRC = Path(__file__).resolve().parents[1] / "src" / "clipadapt"


def _problem(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, (x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) > 0).long()


def _run(spec, model=None, **kw):
    x, y = _problem()
    torch.manual_seed(spec.seed)   # the initial weights are the caller's
    model = model or nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))

    def data(gen, shard):
        return list(torch.randperm(len(x), generator=gen).split(spec.batch_size))

    def loss(m, idx):
        return nn.functional.cross_entropy(m(x[idx]), y[idx])
    return model, train(model, spec, data, loss, **kw)


@pytest.mark.parametrize("field, value, message", [
    ("schedule", "cosin", "schedule 'cosin': use one of"), ("precision", "no", "precision 'no': use one of"),
    ("optimizer", "sgd", "optimizer 'sgd'"), ("warmup", 1.5, "share of the schedule"),
    ("no_decay", "bias", "no_decay 'bias'"), ("tick", "batch", "tick 'batch'")])
def test_a_spec_it_cannot_run_is_refused_with_the_valid_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainSpec(**{field: value})
    with pytest.raises(ValueError, match="linear schedule ticks per step"):
        TrainSpec(schedule="linear", tick="epoch")


def test_warmup_is_a_share_of_the_schedule_in_whole_ticks():
    assert [warmup_ticks(w, n) for w, n in ((0.1, 100), (1 / 7, 7), (0.1, 30), (0.1, 137), (50 / 1593, 1593))] == \
        [10, 1, 3, 13, 50]


def test_the_loss_falls_the_same_seed_gives_the_same_numbers_and_another_seed_others():
    spec = TrainSpec(epochs=15, batch_size=16, lr=3e-2, warmup=0.0, eval_every=1)
    (m1, a), (m2, b) = _run(spec), _run(spec)
    assert a["losses"] == b["losses"] and all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))
    assert a["history"][-1]["loss"] < 0.5 * a["history"][0]["loss"]
    assert a["steps"] == 15 * 4 == len(a["losses"])
    assert _run(spec.replace(seed=1))[1]["losses"] != a["losses"]


@pytest.fixture
def stepped_lrs(monkeypatch):
    """The learning rate of every real optimiser step (AdamW and Adam)."""
    lrs = []
    for cls in (torch.optim.AdamW, torch.optim.Adam):
        def spy(self, *a, _orig=cls.step, **k):
            lrs.append(self.param_groups[0]["lr"])
            return _orig(self, *a, **k)
        monkeypatch.setattr(cls, "step", spy)
    return lrs


def test_the_schedules_are_timm_cosine_per_epoch_and_transformers_linear_per_step(stepped_lrs):
    def cosine(t):   # timm, warmup_prefix=False: the cosine spans the whole length, warm-up overrides its start
        return 1e-5 + 0.5 * (1e-2 - 1e-5) * (1 + math.cos(math.pi * t / 10))
    _run(TrainSpec(epochs=10, batch_size=32, lr=1e-2, warmup=0.2, warmup_lr=1e-4, min_lr=1e-5), nn.Linear(4, 2))
    assert stepped_lrs[0::2] == stepped_lrs[1::2], "the cosine moves once per epoch (2 batches each)"
    assert stepped_lrs[0::2] == pytest.approx([1e-4, 1e-4 + (1e-2 - 1e-4) / 2] + [cosine(t) for t in range(2, 10)])
    stepped_lrs.clear()
    _run(TrainSpec(epochs=5, batch_size=32, lr=1e-2, schedule="linear", tick="step", warmup=0.2), nn.Linear(4, 2))
    assert stepped_lrs == pytest.approx([0.0, 5e-3] + [1e-2 * (10 - s) / 8 for s in range(2, 10)])


def test_no_decay_policies_pick_the_papers_parameters():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Embedding(3, 8))
    names = lambda policy: sorted(n for n, p in model.named_parameters() if NO_DECAY[policy](model)(n, p))  # noqa
    assert names("bias-norm") == ["0.bias", "1.bias", "1.weight"]
    assert names("vectors-embeddings") == ["0.bias", "1.bias", "1.weight"]   # the embedding's name lacks the word
    assert names("none") == []
    groups = param_groups(model, TrainSpec(weight_decay=0.3, no_decay="bias-norm"))
    assert [g["weight_decay"] for g in groups] == [0.3, 0.0] and [len(g["params"]) for g in groups] == [2, 3]


def test_a_loss_that_becomes_nan_stops_the_run_and_says_what_to_try():
    x = torch.randn(8, 4)

    def loss(m, idx):
        return m(x[idx]).sum() * float("nan")
    with pytest.raises(FloatingPointError, match="became nan at epoch 1, step 1; lower the learning rate"):
        train(nn.Linear(4, 2), TrainSpec(epochs=1, batch_size=8), lambda g, s: [torch.arange(8)], loss)


def test_data_that_give_no_batch_are_refused_with_what_to_check():
    with pytest.raises(ValueError, match="no batch to train on .* check the training split and the batch size"):
        train(nn.Linear(4, 2), TrainSpec(epochs=1), lambda g, s: [], lambda m, b: m.weight.sum())


def test_nothing_to_train_is_refused():
    model = nn.Linear(4, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        train(model, TrainSpec(epochs=1), lambda g, s: [0], lambda m, b: m.weight.sum())


def test_gradient_accumulation_steps_once_per_group_and_clipping_bounds_the_gradient(stepped_lrs, monkeypatch):
    _, run = _run(TrainSpec(epochs=2, batch_size=16, grad_accum=2, warmup=0.0, schedule="constant"))
    assert run["steps"] == 8 and len(stepped_lrs) == 4, "8 batches, one optimiser step per 2"
    norms = []

    def spy(self, *a, _orig=torch.optim.Adam.step, **k):
        norms.append(float(torch.cat([p.grad.flatten() for g in self.param_groups for p in g["params"]]).norm()))
        return _orig(self, *a, **k)
    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    x = torch.randn(8, 4) * 1e3
    for clip in (None, 1e-3):
        train(nn.Linear(4, 2), TrainSpec(epochs=1, batch_size=8, optimizer="adam", clip_grad=clip, schedule="constant"),
              lambda g, s: [torch.arange(8)], lambda m, idx: m(x[idx]).pow(2).mean())
    assert norms[0] > 1.0 and norms[1] == pytest.approx(1e-3, rel=1e-4)


def test_one_supervised_training_loop_in_the_package():
    """Optimiser steps on labelled data happen in the engine only; the others are test-time adaptation (an online
    step per batch), SPT's sensitivity pass (gradients, no step) and the timing of one step in the benchmarks."""
    allowed = {"engine.py", "methods/tta.py", "methods/tpt.py", "arena/robustness.py", "methods/spt.py", "costs.py",
               "bench.py"}
    found = {str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if re.search(r"\.backward\(", p.read_text())}
    assert found <= allowed, f"a training loop outside the engine: {sorted(found - allowed)}"
    steps = {str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if re.search(r"\bopt\w*\.step\(\)", p.read_text())}
    assert steps <= allowed - {"methods/spt.py"}, sorted(steps)


def _clip_peclip():
    """The tiny CLIP (random weights) with PE-CLIP's adapters and its GRU along the frames."""
    from clipadapt.methods import peclip
    from clipadapt.models import TINY_NAME, load_clip
    torch.manual_seed(0)
    model = peclip.add_adapters(load_clip(TINY_NAME).model)
    size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    frames = torch.randn(2, 3, 3, size, size)
    return model, model.visual.transformer.resblocks[0], lambda m: peclip.encode_video(m, frames).square().sum()


def _vit_spt():
    """A timm ViT with an SPT allocation: sparse deltas and LoRA (dropout 0.1) where the scores put them."""
    from timm.models.vision_transformer import VisionTransformer

    from clipadapt.methods import spt
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3)
    alloc = spt.allocate(model, spt.random_scores(model, seed=1), budget=900, kind="lora", rank=2)
    model = spt.apply_allocation(model, alloc, dropout=0.1)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    return model, model.blocks[0], lambda m: nn.functional.cross_entropy(m(x), y)


def _vl_pet():
    """The tiny VL-BART (transformers) with VL-PET's gated modules."""
    from test_vlpet import small_vl

    from clipadapt.methods import vlpet
    from clipadapt.models import seq2seq
    model, split, feats = small_vl()
    vlpet.apply_method(model, "vl-pet-large")
    batch = seq2seq.collate(split.examples[:6], feats, model.tokenizer)
    return model, model.lm.model.encoder.layers[0].self_attn, lambda m: m(batch)   # (transformers recomputes forward)


@pytest.mark.parametrize("build", [_clip_peclip, _vit_spt, _vl_pet], ids=["open_clip+PE-CLIP", "timm+SPT", "VL-PET"])
def test_checkpointing_recomputes_the_blocks_with_the_same_outputs_and_gradients(build):
    from clipadapt.engine import block_checkpointing
    model, block, loss = build()
    model.train()
    calls = []
    block.register_forward_pre_hook(lambda *a: calls.append(1))   # (recomputation may stop before the end)

    def run(recompute):
        model.zero_grad(set_to_none=True)
        calls.clear()
        torch.manual_seed(0)   # the same dropout draws in both runs
        with block_checkpointing(model) if recompute else nullcontext():
            value = loss(model)
            value.backward()
        return value.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, \
            len(calls)

    plain, ckpt = run(False), run(True)
    assert plain[2] == 1 and ckpt[2] == 2   # the block ran again in the backward pass
    assert torch.allclose(plain[0], ckpt[0], rtol=1e-6, atol=1e-7)
    assert plain[1].keys() == ckpt[1].keys() and len(plain[1]) > 0
    for name, g in plain[1].items():
        assert torch.allclose(g, ckpt[1][name], rtol=1e-5, atol=1e-7), name
    assert run(False)[2] == 1   # the switches are off again


def test_a_training_run_with_checkpointing_gives_the_same_losses_and_a_model_without_blocks_is_refused():
    spec = TrainSpec(epochs=2, batch_size=4, lr=1e-2, warmup=0.0)
    losses = []
    for recompute in (False, True):
        model, _, loss = _vit_spt()
        result = train(model, spec.replace(checkpointing=recompute), lambda g, s: [0, 1], lambda m, b: loss(m))
        losses.append(result["losses"])
        assert not model.grad_checkpointing
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    with pytest.raises(ValueError, match=r"Sequential has no transformer blocks.*TrainSpec\(checkpointing=False\)"):
        _run(TrainSpec(epochs=1, batch_size=8, checkpointing=True))


@pytest.mark.parametrize("build, count", [(_clip_peclip, None), (_vit_spt, 2), (_vl_pet, None)],
                         ids=["open_clip+PE-CLIP", "timm+SPT", "VL-PET"])
def test_the_blocks_checkpointing_recomputes_are_found_in_every_family(build, count):
    from clipadapt.engine import checkpointed_blocks
    model, block, _ = build()
    blocks = checkpointed_blocks(model)
    assert len({id(b) for b in blocks}) == len(blocks) >= 2
    assert count is None or len(blocks) == count
    assert any(block is b or any(block is m for m in b.modules()) for b in blocks)
    assert checkpointed_blocks(nn.Sequential(nn.Linear(2, 2))) == []


def test_checkpointed_memory_is_what_stays_outside_the_blocks_their_inputs_and_one_block():
    """The estimate from one plain pass against what autograd saves when checkpointing really runs: the tensors
    outside the blocks plus every block's input (torch's checkpoint saves the inputs itself); the estimate adds one
    block's own tensors, which exist again while that block is recomputed."""
    from timm.models.vision_transformer import VisionTransformer

    from clipadapt.bench import training_memory
    from clipadapt.engine import block_checkpointing, checkpointed_blocks
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=3)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    loss = lambda m: nn.functional.cross_entropy(m(x), y)   # noqa: E731  (full fine-tuning: identical blocks)
    blocks = checkpointed_blocks(model)
    plain = training_memory(model, lambda: loss(model), blocks)
    with block_checkpointing(model):
        kept = training_memory(model, lambda: loss(model))["activations_mb"]
    tokens, width = (16 // 8) ** 2 + 1, 32
    one_input = 4 * tokens * width * 4 / 2**20    # a block's input: 4 images, fp32
    outside = kept - len(blocks) * one_input
    one_block = (plain["activations_mb"] - outside) / len(blocks)   # identical blocks, each saves its input too
    assert 0 < outside < kept < plain["activations_mb"]
    assert plain["checkpointed_activations_mb"] == pytest.approx(kept + one_block - one_input, rel=1e-6)
    assert plain["checkpointed_total_mb"] < plain["total_mb"]
