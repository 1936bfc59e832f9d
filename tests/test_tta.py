"""Test-time adaptation: the base loop, Tent and BATCLIP (trainable sets, losses, reset, errors)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipadapt.bench import count_parameters
from clipadapt.methods import build_method, known_methods
from clipadapt.methods.batclip import batclip_losses
from clipadapt.models import TINY_NAME, load_clip
from clipadapt.models.tiny import tiny_config

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
    assert {"source", "tent", "tpt", "batclip"} <= set(known_methods("test-time"))
    with pytest.raises(ValueError, match="unknown method 'batclips'; did you mean batclip"):
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
    zs = build_method("source", clip.model, clip.tokenizer, CLASSES)
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
    m = build_method("source", tiny.model, tiny.tokenizer, ds.classes)
    r = m.run_stream(ds.images, ds.labels, batch_size=16, preprocess=tiny.preprocess)
    assert (r["pred"] == pred).all() and r["accuracy"] == pytest.approx(acc)


# ---- TPT (the per-image prompt-tuning baseline)

def test_prompt_context_starts_as_the_plain_prompt_and_counts_n_ctx_times_width(tiny):
    from clipadapt.models.prompts import PromptContext
    clip = tiny
    pc = PromptContext(clip.model, clip.tokenizer, "a photo of a {}.")
    assert pc.n_ctx == 4 and pc.ctx.shape == (4, tiny_config()["text_cfg"]["width"])
    tokens = clip.tokenizer([f"a photo of a {c}." for c in CLASSES])
    plain = clip.model.encode_text(tokens)
    with pc.applied(clip.model):
        prompted = clip.model.encode_text(tokens)
        with torch.no_grad():
            pc.ctx.add_(torch.randn(pc.ctx.shape, generator=torch.Generator().manual_seed(0)))  # not a constant: LayerNorm removes that
        moved = clip.model.encode_text(tokens)
    assert torch.allclose(plain, prompted, atol=1e-6) and not torch.allclose(plain, moved, atol=1e-3)
    assert torch.equal(clip.model.encode_text(tokens), plain)   # the hook is gone after the block
    with pytest.raises(ValueError, match="no words before the class name"):
        PromptContext(clip.model, clip.tokenizer, "{}.")


def test_tpt_tunes_only_the_prompt_and_resets_per_image(clip):
    m = build_method("tpt", clip.model, clip.tokenizer, CLASSES, n_views=8)
    assert count_parameters(m.model).trainable == 0 and [p.shape for p in m.params] == [m.prompt.ctx.shape]
    before = {n: p.detach().clone() for n, p in m.model.named_parameters()}
    ctx0 = m.prompt.ctx.detach().clone()
    x = _batch(3)
    torch.manual_seed(0)
    a = m(x)
    assert a.shape == (3, len(CLASSES))
    assert all(torch.equal(p, before[n]) for n, p in m.model.named_parameters())
    assert torch.equal(m.prompt.ctx, ctx0)                    # episodic: reset after every image
    torch.manual_seed(0)
    assert torch.equal(m(x), a)                                 # same views, same result: nothing carried over
    torch.manual_seed(0)
    assert torch.equal(m(x[:1]), a[:1])                         # a batch of one is fine for a per-image method
    zs = build_method("source", clip.model, clip.tokenizer, CLASSES)(x)
    assert not torch.allclose(a, zs, atol=1e-4)                 # the tuned prompt changed the prediction


def test_tpt_step_lowers_the_marginal_entropy_of_the_confident_views(clip):
    from clipadapt.methods.tpt import confident_views, marginal_entropy
    logits = torch.tensor([[4.0, 0.0], [0.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    assert confident_views(logits, 0.5).tolist() == [0, 2]     # the two most peaked rows
    p = logits[[0, 2]].softmax(1).mean(0)
    assert marginal_entropy(logits[[0, 2]]).item() == pytest.approx(float(-(p * p.log()).sum()))
    m = build_method("tpt", clip.model, clip.tokenizer, CLASSES, n_views=16, lr=0.05)
    feats = F.normalize(clip.model.encode_image(m.views(_batch(1)[0])), dim=-1).detach()
    scale = clip.model.logit_scale.exp()
    loss = lambda: m.loss({"logits": scale * feats @ m._text_features().T})
    l0 = loss()
    m.optimizer.zero_grad()
    l0.backward()
    m.optimizer.step()
    assert loss().item() < l0.item()


def test_tpt_refuses_continual_mode(clip):
    with pytest.raises(ValueError, match="episodic must be True"):
        build_method("tpt", clip.model, clip.tokenizer, CLASSES, episodic=False)


# ---- the chapter's set-ups and the benchmark loop on both profiles' sources

def test_bench_setup_follows_the_official_configs_and_refuses_unknown_datasets(tmp_path):
    from clipadapt.chapters.batclip import bench_setup
    s = bench_setup("paper", "cifar100-c", data_root=tmp_path)
    assert (s.batch_size, s.optim) == (200, {"optimizer": "adam", "lr": 5e-4, "weight_decay": 0.01})
    assert bench_setup("paper", "imagenet-c", n_images=5000).source.name == "ImageNet-C (5,000-image subset)"
    with pytest.raises(ValueError, match="not part of the ci profile of this chapter; choose from shapes"):
        bench_setup("ci", "cifar10-c")
    with pytest.raises(ValueError, match="unknown profile"):
        bench_setup("gpu", "cifar10-c")


def test_benchmark_runs_on_fake_cifar10c_in_the_release_layout(tmp_path, clip):
    # the paper profile's data path, on 8 fake images per severity in the real on-disk layout
    from clipadapt.chapters.batclip import bench_setup
    from clipadapt.data.real import DatasetMissingError
    from clipadapt.methods.tta import corruption_benchmark
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for c in ("fog", "snow"):
        np.save(folder / f"{c}.npy", rng.integers(0, 255, (5 * 8, 32, 32, 3), dtype=np.uint8))
    np.save(folder / "labels.npy", np.tile(np.arange(8) % 10, 5).astype(np.uint8))
    s = bench_setup("paper", "cifar10-c", data_root=tmp_path)
    methods = {"zero-shot": {"method": "source"}, "BATCLIP": {"method": "batclip", **s.optim},
               "TPT": {"method": "tpt", "n": 2, "n_views": 4}}
    df = corruption_benchmark(lambda: clip, s.source, methods, ["fog", "snow"], (5,), batch_size=4, seed=0,
                              show_progress=False)
    assert len(df) == 6 and set(df.images) == {8, 2} and df.accuracy.between(0, 100).all()
    with pytest.raises(DatasetMissingError, match="prepare_corruptions.py --dataset cifar10-c"):
        corruption_benchmark(lambda: clip, s.source, methods, ["frost"], (5,), show_progress=False)


@pytest.mark.parametrize("name", ["tent", "batclip"])
def test_a_nan_image_skips_that_batchs_update_and_later_batches_adapt_as_without_it(name):
    """One broken image used to turn every LayerNorm into NaN and every later prediction into class 0."""
    def run(batches):
        torch.manual_seed(0)
        c = load_clip(TINY_NAME)
        m = build_method(name, c.model, c.tokenizer, CLASSES, lr=1e-2)
        return m, [m(b) for b in batches]
    b0, b2, b3 = _batch(6, 0), _batch(6, 2), _batch(6, 3)
    broken = _batch(6, 1)
    broken[2] = float("nan")
    m, with_nan = run([b0, broken, b2, b3])
    _, without = run([b0, b2, b3])
    assert m.skipped_updates == 1
    assert all(torch.isfinite(p).all() for p in m.params)
    assert torch.equal(with_nan[2], without[1]) and torch.equal(with_nan[3], without[2])
    assert torch.isfinite(with_nan[1][[0, 1, 3, 4, 5]]).all()   # the batch's other images are still predicted


def test_a_streams_short_tail_is_predicted_without_adapting_and_bad_streams_are_refused(clip):
    m = build_method("tent", clip.model, clip.tokenizer, CLASSES)
    images = np.random.default_rng(0).integers(0, 255, (5, 48, 48, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 0])
    pre = clip.preprocess
    out = m.run_stream(images, labels, 2, pre)   # batches of 2, 2 and a tail of 1
    assert len(out["pred"]) == 5 and out["unadapted"] == 1 and out["skipped_updates"] == 0
    with pytest.raises(ValueError, match="the stream is empty"):
        m.run_stream(images[:0], labels[:0], 2, pre)
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        m.run_stream(images, labels[:4], 2, pre)
    with pytest.raises(ValueError, match="batch_size must be at least 2"):
        m.run_stream(images, labels, 1, pre)


@pytest.mark.parametrize("names, kw, message", [
    ([], {}, "no class names: give one name per class"),
    (["circle", "square", "circle"], {}, "'circle' appear more than once"),
    (CLASSES, {"steps": 0}, "steps must be at least 1"),
    (CLASSES, {"lr": 0.0}, "lr must be positive"),
])
def test_test_time_methods_refuse_bad_classes_and_settings(clip, names, kw, message):
    with pytest.raises(ValueError, match=message):
        build_method("batclip", clip.model, clip.tokenizer, names, **kw)


def test_class_prompts_are_encoded_over_their_own_length_with_the_features_and_gradients_of_the_full_context(clip):
    from clipadapt.methods.tta import encode_prompts
    model = clip.model
    tokens = clip.tokenizer([f"a photo of a {c}." for c in CLASSES + ["very long winding class name"]])
    assert int(tokens.argmax(-1).max()) + 1 < tokens.shape[1] // 2   # most of the context is padding
    grads = []
    for encode in (model.encode_text, lambda t: encode_prompts(model, t)):
        model.zero_grad(set_to_none=True)
        feats = encode(tokens)
        (feats * torch.linspace(-1, 1, feats.shape[-1])).sum().backward()
        grads.append((feats.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                       if p.grad is not None and "ln" in n}))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-5)
    assert grads[0][1].keys() == grads[1][1].keys() and grads[0][1]
    for name, g in grads[0][1].items():
        assert (grads[1][1][name] - g).abs().max() <= 1e-4 * g.abs().max(), name   # float rounding only


def test_the_tta_step_benchmark_times_batclip_against_zero_shot_and_refuses_what_it_cannot_run():
    from clipadapt.arena import tta_step
    r = tta_step(TINY_NAME, batch=4, classes=12, repeats=1)
    assert r["ratio"] == pytest.approx(r["batclip_s"] / r["zero_shot_s"]) and r["classes"] == 12
    with pytest.raises(ValueError, match="at least 2 images"):
        tta_step(TINY_NAME, batch=1)
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        tta_step(TINY_NAME, repeats=0)
