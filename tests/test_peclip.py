"""PE-CLIP's adapters: shapes, identity at start, per-video GRU, parameter counts against the official formulas,
and UAR/WAR."""
import numpy as np
import pytest
import torch

from clipadapt.methods import peclip


def _tiny_clip(seed=0):
    import open_clip
    torch.manual_seed(seed)
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 16, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
           "text_cfg": {"context_length": 12, "vocab_size": 100, "width": 32, "heads": 2, "layers": 2}}
    return open_clip.CLIP(**cfg).eval()


def test_tda_starts_as_the_identity_so_the_model_starts_as_clip_with_sha():
    frames = torch.randn(2, 4, 3, 16, 16)
    a = peclip.add_adapters(_tiny_clip(), temporal="tda")
    b = peclip.add_adapters(_tiny_clip(), temporal="none")
    b.load_state_dict({k: v for k, v in a.state_dict().items() if k in b.state_dict()})   # the same ShA weights
    with torch.no_grad():
        assert torch.allclose(peclip.encode_video(a, frames), peclip.encode_video(b, frames), atol=1e-6)
        assert peclip.encode_video(a, frames).shape == (2, 32)
        plain = _tiny_clip()
        assert not torch.allclose(peclip.encode_video(plain, frames), peclip.encode_video(a, frames), atol=1e-4)


def _tda(leak):
    torch.manual_seed(0)
    m = peclip.TemporalAdapter(16, reduction=4, leak_across_videos=leak)
    torch.nn.init.normal_(m.up.weight, std=0.1)   # a trained TDA: no longer the identity
    m.frames = 5
    return m


def test_gru_runs_per_video_so_a_video_does_not_depend_on_its_batch_and_the_official_layout_does():
    x = torch.randn(2 * 5, 3, 16)   # two videos of 5 frames, 3 tokens
    ours = _tda(leak=False)
    with torch.no_grad():
        together = ours(x)
        assert torch.allclose(together[:5], ours(x[:5]), atol=1e-6) and torch.allclose(together[5:], ours(x[5:]), atol=1e-6)
        official = _tda(leak=True)
        assert not torch.allclose(official(x)[5:], official(x[5:]), atol=1e-4)   # state leaks from video 1 into 2
    with pytest.raises(ValueError, match="whole number of videos"):
        ours(torch.randn(7, 3, 16))
    fresh = peclip.TemporalAdapter(16)
    with pytest.raises(RuntimeError, match="set_frames"):
        fresh(x)


def test_parameter_counts_on_vit_b_16_match_the_official_formulas():
    import open_clip
    model = open_clip.create_model("ViT-B-16", pretrained=None)
    total = sum(p.numel() for p in model.parameters())
    peclip.add_adapters(model)
    g = peclip.adapter_groups(model)
    sha_v, tda, ad_t = 2 * 768 * 96 + 96 + 768, 2 * 768 + 768 + 1 + 768 * 96 + 96 + 2 * 3 * (96 * 96 + 96) + 96 * 768 + 768, 2 * 512 * 64 + 64 + 512
    assert (sha_v, tda, ad_t) == (148_320, 206_497, 66_112)
    assert g == {"image ShA": 12 * sha_v, "image TDA / adapter": 12 * tda, "text adapters": 24 * ad_t}
    assert sum(g.values()) == 4_257_804 + 1_586_688
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(g.values()) and sum(p.numel() for p in model.parameters()) == total + trainable


def test_gradients_reach_only_the_adapters():
    model = peclip.add_adapters(_tiny_clip(), temporal="tda")
    for m in model.modules():
        if isinstance(m, peclip.TemporalAdapter):
            torch.nn.init.normal_(m.up.weight, std=0.1)
    e = peclip.encode_video(model, torch.randn(2, 3, 3, 16, 16))
    t = model.encode_text(torch.randint(0, 100, (2, 12)))
    (e @ t.T).sum().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None and p.grad.abs().sum() > 0) == p.requires_grad, n
    with pytest.raises(ValueError, match="unknown temporal adapter 'lstm'"):
        peclip.add_adapters(_tiny_clip(), temporal="lstm")


def test_uar_and_war_match_sklearn_on_a_fixed_confusion():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    from clipadapt.eval import uar_war
    y = np.array([0] * 50 + [1] * 30 + [2] * 15 + [3] * 5)
    pred = y.copy()
    pred[:10], pred[50:65], pred[95:99] = 1, 0, 2     # class 0 80%, class 1 50%, class 3 20% recall
    uar, war = uar_war(pred, y, 4)
    assert uar == pytest.approx(100 * balanced_accuracy_score(y, pred)) and war == pytest.approx(100 * accuracy_score(y, pred))
    assert uar == pytest.approx(100 * (0.8 + 0.5 + 1.0 + 0.2) / 4) and war < 80 and uar < war


def test_maple_prompts_count_and_reach_both_towers():
    import open_clip

    from clipadapt.models.prompts import MultiModalPrompts
    big = MultiModalPrompts(open_clip.create_model("ViT-B-16", pretrained=None), n_ctx=2, depth=9)
    assert sum(p.numel() for p in big.parameters()) == 3_555_072   # 9 x (2 x 512) + 9 x (512 x 768 + 768)
    model = _tiny_clip().requires_grad_(False)
    prompts = MultiModalPrompts(model, n_ctx=2, depth=2)
    assert prompts.placeholder == "X X"
    text = torch.tensor([[98, 5, 5, 10, 11, 12, 99] + [0] * 5])   # start, the two placeholders, words, end (pooled)
    img = torch.randn(2, 3, 16, 16)
    plain_t, plain_i = model.encode_text(text), model.encode_image(img)
    with prompts.applied(model):
        t, i = model.encode_text(text), model.encode_image(img)
    assert t.shape == plain_t.shape and i.shape == plain_i.shape
    assert not torch.allclose(t, plain_t) and not torch.allclose(i, plain_i)
    (t.sum() + i.sum()).backward()
    assert all(p.grad is not None for p in prompts.parameters())
    assert torch.equal(model.encode_text(text), plain_t)   # hooks removed on exit
    with pytest.raises(ValueError, match="prompt depth 5"):
        MultiModalPrompts(model, depth=5)


def test_clips_are_seeded_imbalanced_subject_independent_and_peak_briefly():
    from clipadapt.data import clips
    tr, te = clips.make_split(40, 20, frames=8, seed=0)
    again, _ = clips.make_split(40, 20, frames=8, seed=0)
    assert tr.frames.shape == (40, 8, 48, 48, 3) and np.array_equal(tr.frames, again.frames)
    assert not set(tr.subjects) & set(te.subjects)
    env = clips.envelope(16, apex=7, rise=2, hold=0, fall=2)
    assert env.argmax() == 7 and env.max() == 1 and (env > 0).sum() <= 5 and env[0] == 0 and env[-1] == 0
    big = clips.make_clips(300, frames=5, seed=1)
    freq = np.bincount(big.labels, minlength=7) / 300
    assert freq.max() > 2 * freq.min()   # imbalanced, so UAR and WAR differ
    assert len(clips.AU_DESCRIPTIONS) == len(clips.EXPRESSIONS) == len(clips.EXPRESSION_AUS)


def test_peclip_model_gives_class_logits_and_trains_only_adapters_and_prompts():
    model = peclip.PEClip(_tiny_clip(), lambda texts: torch.randint(1, 90, (len(texts), 12)),
                          ["Cheek Raiser.", "Jaw Drop.", "Relaxed Muscles."], depth=2)
    logits = model(torch.randn(2, 3, 3, 16, 16))
    assert logits.shape == (2, 3) and logits.abs().max() <= 1 / peclip.TEMPERATURE + 1e-3
    groups = model.param_groups()
    assert [g["lr"] for g in groups] == [2e-4, 3e-5]
    trainable = {id(p) for g in groups for p in g["params"]}
    assert trainable == {id(p) for p in model.parameters() if p.requires_grad}
    logits.logsumexp(1).sum().backward()
    assert all(p.grad is not None for g in groups for p in g["params"] if p.requires_grad)


def test_too_short_clips_are_refused_with_the_reason():
    from clipadapt.data import clips
    with pytest.raises(ValueError, match="at least 5 frames"):
        clips.make_clips(2, frames=4)
