"""Paper step costs measured on the paper architectures (clipadapt.costs): the line through small batches gives a
direct measurement at a larger one, counts follow the methods' formulas, and bad input says what to do."""
import pytest
import torch
from torch import nn

from clipadapt import costs


def _small_vit_setup():
    import timm

    def build():
        vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=64)
        vit.requires_grad_(False)
        vit.head.requires_grad_(True)
        return vit

    def loss(model, n):
        x = torch.randn(n["images"], 3, 64, 64)
        return lambda: nn.functional.cross_entropy(model(x), torch.arange(n["images"]) % 5)
    return costs.StepSetup("test", "linear probe", "ViT-Ti/16 at 64 px", "images", 6, {"images": 6}, build, loss)


def test_the_line_through_small_batches_gives_the_cost_of_a_larger_one():
    setup = _small_vit_setup()
    model = setup.build()
    line = costs.at_paper_size(setup, model)
    direct = costs.step_cost(model, setup.loss(model, {"images": 6}))
    assert line["gflop"] == pytest.approx(direct["gflop"], rel=1e-3)
    assert line["activations_mb"] == pytest.approx(direct["activations_mb"], rel=0.02)
    assert line["weights_mb"] == direct["weights_mb"] and line["trainable"] == 192 * 5 + 5
    # a linear probe sends no gradient through the blocks: checkpointing them has nothing to save
    assert line["checkpointed_activations_mb"] == pytest.approx(line["activations_mb"], rel=1e-6)


def test_checkpointing_is_costed_on_the_same_line_with_its_extra_forward_pass():
    setup = _small_vit_setup()
    model = setup.build().requires_grad_(True)   # full fine-tuning: every block keeps activations
    line = costs.at_paper_size(setup, model)
    direct = costs.step_cost(model, setup.loss(model, {"images": 6}))
    assert line["checkpointed_activations_mb"] == pytest.approx(direct["checkpointed_activations_mb"], rel=0.02)
    assert line["checkpointed_activations_mb"] < 0.35 * line["activations_mb"]
    assert 1.2 < line["checkpointed_gflop"] / line["gflop"] < 1.4   # one more forward pass: about a third more


def test_dropout_is_measured_with_the_one_byte_mask_a_gpu_keeps():
    x = torch.randn(64, 32, requires_grad=True)
    drop = nn.Dropout(0.1)
    from clipadapt.bench import training_memory
    cpu = training_memory(drop, lambda: drop(x).sum())["activations_mb"] * 2**20
    with costs.gpu_dropout():
        gpu = training_memory(drop, lambda: drop(x).sum())["activations_mb"] * 2**20
        torch.manual_seed(0)
        y = drop(x)
    assert cpu == x.numel() * 4 and gpu == x.numel()
    torch.testing.assert_close(y[y != 0] / x[y != 0], torch.full_like(x[y != 0], 1 / 0.9))   # the same scaling
    assert 0.8 < (y != 0).float().mean() < 0.97
    assert training_memory(drop, lambda: drop(x).sum())["activations_mb"] * 2**20 == cpu   # restored on exit


def test_training_memory_counts_gradients_and_both_adam_moments_of_what_trains_only():
    setup = _small_vit_setup()
    model = setup.build()
    c = costs.step_cost(model, setup.loss(model, {"images": 2}))
    assert c["grads_and_adam_mb"] == pytest.approx(3 * 4 * (192 * 5 + 5) / 2**20)
    assert c["weights_mb"] == pytest.approx(4 * c["total"] / 2**20)


def test_batclip_trains_the_layernorms_of_both_towers_of_vit_b16():
    # ViT-B/16 image tower: ln_pre, ln_post and 2 per block, width 768; text tower: 2 per block and ln_final, 512
    setup = costs.batclip_setup("cifar10-c")
    c = costs.at_paper_size(setup)
    assert c["trainable"] == (2 + 2 * 12) * 2 * 768 + (2 * 12 + 1) * 2 * 512
    assert setup.steps == 15 * 50 and setup.paper == {"images": 200, "classes": 10}
    assert c["activations_mb"] > 10 * c["grads_and_adam_mb"], "LayerNorm-only: memory is the activations"


def test_cost_table_estimates_gpu_hours_from_the_operations():
    setup = _small_vit_setup()
    df = costs.paper_costs([setup], utilisation=0.5, gpu="A100", show_progress=False)
    row = df.iloc[0]
    assert row["run"] == "per 1,000 images" and row["steps"] == pytest.approx(1000 / 6)
    assert row["gpu_hours"] == pytest.approx(row["gflop_per_step"] * 1e9 * row["steps"] / (0.5 * 312e12) / 3600)
    with pytest.raises(ValueError, match="unknown GPU 'V100'; known: T4"):
        costs.paper_costs([setup], gpu="V100")
    with pytest.raises(ValueError, match="utilisation is a share"):
        costs.paper_costs([setup], utilisation=40)
