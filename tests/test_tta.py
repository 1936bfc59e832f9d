"""Test-time adaptation: the base loop, Tent and BATCLIP (trainable sets, losses, reset, errors)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipadapt.bench import count_parameters
from clipadapt.methods import build_method, known_methods
from clipadapt.methods.batclip import batclip_losses
from clipadapt.models import TINY_NAME, load_clip
from clipadapt.models.loader import tiny_config

CLASSES = ["circle", "square", "triangle", "star"]


@pytest.fixture()
def clip():
    torch.manual_seed(0)
    return load_clip(TINY_NAME)  # random weights suffice for mechanics


def _batch(n=6, seed=0):
    return torch.randn(n, 3, 48, 48, generator=torch.Generator().manual_seed(seed))


def _ln_count(layers_v, width_v, layers_t, width_t):
    # ViT: ln_pre + 2 per block + ln_post; text: 2 per block + ln_final; weight and bias each
    return (2 * layers_v + 2) * 2 * width_v, (2 * layers_t + 1) * 2 * width_t


def test_registry_knows_methods_and_rejects_unknown(clip):
    assert {"zero-shot", "tent", "batclip"} <= set(known_methods())
    with pytest.raises(ValueError, match="unknown method 'batclips'; known methods: .*batclip"):
        build_method("batclips", clip.model, clip.tokenizer, CLASSES)


@pytest.mark.parametrize("towers", ["both", "image", "text"])
def test_batclip_trains_exactly_the_layernorms_of_the_chosen_towers(clip, towers):
    cfg = tiny_config()
    vis, txt = _ln_count(cfg["vision_cfg"]["layers"], cfg["vision_cfg"]["width"], cfg["text_cfg"]["layers"],
                         cfg["text_cfg"]["width"])
    m = build_method("batclip", clip.model, clip.tokenizer, CLASSES, towers=towers)
    expected = {"both": vis + txt, "image": vis, "text": txt}[towers]
    assert count_parameters(m.model).trainable == expected
    assert all(n.split(".")[-1] in ("weight", "bias") and ("ln" in n) for n, p in m.model.named_parameters()
               if p.requires_grad)


def test_batclip_on_vit_b16_adapts_65536_parameters():
    # the paper's count: 0.044% of ViT-B/16 (built without weights)
    model = load_clip("ViT-B-16")
    m = build_method("batclip", model.model, model.tokenizer, CLASSES)
    c = count_parameters(m.model)
    assert c.trainable == 65_536 and c.total == 149_620_737


@pytest.mark.parametrize("name,towers", [("batclip", "both"), ("batclip", "image"), ("batclip", "text"),
                                         ("tent", None)])
def test_one_step_changes_only_layernorm_weights(clip, name, towers):
    kw = {"towers": towers} if towers else {}
    m = build_method(name, clip.model, clip.tokenizer, CLASSES, **kw)
    before = {n: p.detach().clone() for n, p in m.model.named_parameters()}
    trainable = {n for n, p in m.model.named_parameters() if p.requires_grad}
    m(_batch())
    changed = {n for n, p in m.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable


def test_predict_then_adapt_returns_the_pre_update_logits(clip):
    x = _batch()
    zs = build_method("zero-shot", clip.model, clip.tokenizer, CLASSES)
    ref = zs(x)
    m = build_method("batclip", clip.model, clip.tokenizer, CLASSES)
    first = m(x)
    assert torch.allclose(first, ref, atol=1e-5)          # scored before the first update
    assert not torch.allclose(m(x), ref, atol=1e-5)        # the second call sees the adapted model


def test_reset_restores_weights_and_optimizer_exactly(clip):
    m = build_method("batclip", clip.model, clip.tokenizer, CLASSES)
    w0 = {k: v.clone() for k, v in m.model.state_dict().items()}
    o0 = m.optimizer.state_dict()
    for s in range(3):
        m(_batch(seed=s))
    assert len(m.optimizer.state_dict()["state"]) > 0
    m.reset()
    assert all(torch.equal(w0[k], v) for k, v in m.model.state_dict().items())
    assert m.optimizer.state_dict()["state"] == o0["state"] == {}
    a = m(_batch(seed=9))
    m.reset()
    assert torch.equal(a, m(_batch(seed=9)))  # same input after reset: same predictions and update


def test_episodic_resets_before_every_batch(clip):
    m = build_method("tent", clip.model, clip.tokenizer, CLASSES, episodic=True)
    x = _batch()
    assert torch.equal(m(x), m(x))


def test_batclip_losses_match_hand_computation():
    logits = torch.tensor([[2.0, 0.0, 0.0], [3.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    img = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])      # unnormalised
    txt = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]), dim=-1)
    out = batclip_losses(logits, img, txt)
    # classes 0 (rows 0,1) and 2 (row 2) are predicted; prototypes (2,0) and (0,2)
    assert out["pm"].item() == pytest.approx((2.0 * 1.0 + 2.0 * 1.0) / 2)
    # two ordered pairs of orthogonal prototypes: 2 * (1 - 0)
    assert out["sp"].item() == pytest.approx(2.0)
    p = torch.softmax(logits, 1)
    assert out["entropy"].item() == pytest.approx(float(-(p * p.log()).sum(1).mean()))


def test_batch_of_one_and_bad_config_are_refused(clip):
    m = build_method("batclip", clip.model, clip.tokenizer, CLASSES)
    with pytest.raises(ValueError, match="at least 2 per batch"):
        m(_batch(1))
    with pytest.raises(ValueError, match="towers must be one of"):
        build_method("batclip", clip.model, clip.tokenizer, CLASSES, towers="vision")
    with pytest.raises(ValueError, match="precision must be"):
        build_method("tent", clip.model, clip.tokenizer, CLASSES, precision="fp16")


def test_zero_shot_stream_agrees_with_the_eval_module(tiny):
    # the TTA loop's zero-shot and clipadapt.eval's zero-shot classifier are the same predictions
    from clipadapt.data import microworld
    from clipadapt.eval import zero_shot_accuracy
    ds = microworld.heldout_shapes(60)
    acc, pred = zero_shot_accuracy(tiny.model, tiny.preprocess, tiny.tokenizer, ds)
    m = build_method("zero-shot", tiny.model, tiny.tokenizer, ds.classes)
    r = m.run_stream(ds.images, ds.labels, batch_size=16, preprocess=tiny.preprocess)
    assert (r["pred"] == pred).all() and r["accuracy"] == pytest.approx(acc)
