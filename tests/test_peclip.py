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
    split = clips.make_split(40, 10, 20, frames=8, seed=0)
    again = clips.make_split(40, 10, 20, frames=8, seed=0)
    tr, va, te = split["train"], split["val"], split["test"]
    assert tr.frames.shape == (40, 8, 48, 48, 3) and np.array_equal(tr.frames, again["train"].frames)
    assert not set(tr.subjects) & set(te.subjects) and not set(va.subjects) & (set(tr.subjects) | set(te.subjects))
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


def test_ablation_variants_train_what_they_name_and_select_on_validation(tmp_path):
    from clipadapt.data.clips import EXPRESSIONS
    from clipadapt.engine import TrainSpec
    tok = lambda texts: torch.randint(1, 90, (len(texts), 12))
    counts = {}
    for label, v in peclip.VARIANTS.items():
        torch.manual_seed(0)
        _, m = peclip.build_variant(v, _tiny_clip(), tok, EXPRESSIONS, depth=2)
        counts[label] = sum(p.numel() for p in m.parameters() if p.requires_grad)
        assert m(torch.randn(2, 3, 3, 16, 16)).shape == (2, 7), label
    sha, tda, ad = 2 * 32 * 4 + 4 + 32, 2 * 32 + 32 + 1 + 32 * 4 + 4 + 2 * 3 * (16 + 4) + 4 * 32 + 32, 2 * 32 * 4 + 4 + 32
    prompts = 2 * (2 * 32 + 32 * 32 + 32)
    assert counts["zero-shot, AU texts"] == counts["zero-shot, class names"] == 0
    assert counts["linear probe"] == 32 * 7 + 7
    assert counts["ShA only"] == 2 * 2 * sha
    assert counts["ShA + TDA"] == 2 * (sha + tda) + 2 * (sha + ad)
    assert counts["PE-CLIP"] == counts["ShA + TDA"] + prompts
    assert counts["PE-CLIP, TDA replaced by mean pooling"] == 2 * 2 * (sha + ad) + prompts
    assert counts["prompts only (MaPLe)"] == prompts
    assert counts["full fine-tuning"] == sum(p.numel() for p in _tiny_clip().parameters()) - 1   # all but logit_scale
    with pytest.raises(ValueError, match="unknown PE-CLIP variant 'lora'"):
        peclip.build_variant("lora", _tiny_clip(), tok, EXPRESSIONS)
    with pytest.raises(ValueError, match="unknown class texts"):
        peclip.class_texts("emoji", EXPRESSIONS)

    # a toy ablation: the video's class is which frame is bright; selection on val, weights of that epoch restored
    g = torch.Generator().manual_seed(0)
    def toy(n):
        y = torch.randint(0, 7, (n,), generator=g)
        x = torch.randn(n, 7, 3, 16, 16, generator=g) * 0.1
        x[torch.arange(n), y] += 1.0
        return torch.utils.data.TensorDataset(x, y)
    data = {"train": toy(56), "val": toy(21), "test": toy(21)}
    load = lambda: type("L", (), {"model": _tiny_clip(), "tokenizer": staticmethod(tok)})()   # a fresh CLIP per run
    v = {"ShA + TDA": peclip.VARIANTS["ShA + TDA"], "zero-shot, AU texts": peclip.VARIANTS["zero-shot, AU texts"]}
    fit = TrainSpec(epochs=3, batch_size=8, warmup=0.0, eval_every=1)
    df = peclip.ablation(load, data, v, fit_cfg=fit, cfg=peclip.AblationConfig(depth=2), show_progress=False)
    row = df.set_index("variant").loc["ShA + TDA"]
    hist = row["history"]
    best = max(hist, key=lambda h: (h["val_uar"], -h["epoch"]))
    assert row["epoch"] == best["epoch"] and not any(k.startswith("test_") for h in hist for k in h)   # test once
    from clipadapt.eval import uar_war
    y = data["test"].tensors[1].numpy()
    assert (row["uar"], row["war"]) == pytest.approx(uar_war(row["pred"], y, 7))   # the restored weights' scores
    assert row["memory_mb"] > 0 and row["s_per_step"] > 0
    assert np.isnan(df.set_index("variant").loc["zero-shot, AU texts"]["s_per_step"])

    # with a job store the same ablation is read back, not trained, and the kept model is the trained one
    from clipadapt.checkpoints import JobStore
    args = dict(fit_cfg=fit, cfg=peclip.AblationConfig(depth=2), show_progress=False, keep=("ShA + TDA",),
                store=JobStore(tmp_path), key=("fold1",))
    first = peclip.ablation(load, data, v, **args)
    assert JobStore(tmp_path).path("fold1", "ShA + TDA", 0).exists()
    import clipadapt.finetune as ft
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ft, "fit_classifier", lambda *a, **k: pytest.fail("a stored job trained again"))
        again = peclip.ablation(load, data, v, **args)
    assert again[["variant", "uar", "war", "epoch"]].equals(first[["variant", "uar", "war", "epoch"]])
    x = data["test"].tensors[0][:4]
    with torch.no_grad():
        assert torch.equal(again.model[0](x), first.model[0](x))


def _fake_dfew(root, n_train, n_test, folds=(1,), n_frames=6, size=8):
    """A few clips in DFEW's layout (Clip/clip_224x224/<id>/<frame>.jpg) and the official list format, with the
    authors' absolute Windows paths; labels cycle through the 7 classes."""
    from PIL import Image
    base = root / "dfer" / "dfew"
    (base / "annotation").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, n_train + n_test + 1):
        folder = base / "Clip" / "clip_224x224" / f"{i:05d}"
        folder.mkdir(parents=True)
        for f in range(n_frames):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{f:05d}.jpg")
    line = lambda i: f"D:/KmuProj2/Code4/DFEWdataset/Clip/clip_224x224/{i:05d} {n_frames} {i % 7}"
    for fold in folds:
        (base / "annotation" / f"DFEW_set_{fold}_train.txt").write_text("\n".join(line(i) for i in range(1, n_train + 1)) + "\n")
        (base / "annotation" / f"DFEW_set_{fold}_test.txt").write_text(
            "\n".join(line(i) for i in range(n_train + 1, n_train + n_test + 1)) + "\n")
    return base


def test_dfew_layout_reads_official_lists_samples_segments_and_names_the_fix_when_frames_are_missing(tmp_path):
    from clipadapt.data import dfer
    from clipadapt.data.real import DatasetMissingError
    from clipadapt.models.loader import load_clip
    assert dfer.segment_indices(48, 16).tolist() == [int(1.5 + 3 * k) for k in range(16)]   # centres
    assert dfer.segment_indices(5, 8).tolist() == [0, 1, 2, 3, 4, 4, 4, 4]                  # padded with the last
    r = dfer.segment_indices(48, 16, np.random.default_rng(0))
    assert all(3 * k <= i < 3 * (k + 1) for k, i in enumerate(r))                          # one per segment
    base = _fake_dfew(tmp_path, n_train=10, n_test=3)
    pre = load_clip("clipadapt-tiny", None).preprocess
    sets = dfer.load_dfer("dfew", pre, fold=1, root=tmp_path, segments=4)
    assert [len(sets[s]) for s in ("train", "val", "test")] == [9, 1, 3]
    x, y = sets["test"][[0, 2]]
    assert x.shape == (2, 4, 3, 48, 48) and y.tolist() == [4, 6]
    # the AFEW lists number classes alphabetically: 0 is anger, which is index 3 in DFEW's order
    (tmp_path / "dfer" / "afew" / "annotation").mkdir(parents=True)
    (tmp_path / "dfer" / "afew" / "annotation" / "AFEW_train.txt").write_text("/x/AFEW_Face_Retina/a/1 10 0\n")
    _, _, labels = dfer.read_list("afew", "train", root=tmp_path)
    assert labels.tolist() == [3]
    with pytest.raises(DatasetMissingError, match="prepare_dfer.py --dataset dfew"):
        dfer.read_list("dfew", "train", fold=2, root=tmp_path)
    import shutil
    shutil.rmtree(base / "Clip" / "clip_224x224" / "00012")
    with pytest.raises(DatasetMissingError, match="1 of 13 listed dfew clips are missing.*dfew-dataset.github.io"):
        dfer.load_dfer("dfew", pre, root=tmp_path)
    with pytest.raises(ValueError, match="known: dfew, ferv39k, afew"):
        dfer.get_dfer("mafw")


@pytest.mark.slow
def test_chapter_paper_branch_runs_on_stand_ins(tmp_path, monkeypatch):
    # the paper profile's chapter path (DFEW reader, validation selection, mixup, published-vs-ours table) on fake
    # clips in DFEW's layout and the tiny CLIP saved as a local checkpoint; the numbers are meaningless here
    from clipadapt import book
    from clipadapt.models import TINY_NAME, load_clip
    from clipadapt.results import load_record
    _fake_dfew(tmp_path, n_train=24, n_test=7, folds=(1, 2))
    torch.save(load_clip(TINY_NAME, None).model.state_dict(), tmp_path / "w.pt")
    monkeypatch.setenv("CLIPADAPT_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("CLIPADAPT_RERUN", "1")   # the paper path runs on every test run, not from the cache
    book.run_notebook(book.ROOT / "notebooks" / "01_peclip.ipynb", profile="paper", out_dir=tmp_path / "out",
                      epochs=1, frames=4, folds=[1, 2], prompt_depth=2, model=TINY_NAME, pretrained=str(tmp_path / "w.pt"),
                      data_root=str(tmp_path), num_workers=0)
    rec = load_record("01_peclip", "paper", tmp_path / "results")
    runs = rec["tables"]["runs"]
    assert {r["fold"] for r in runs} == {1, 2} and {r["variant"] for r in runs} == {
        "zero-shot, class names", "zero-shot, AU texts", "PE-CLIP"}
    assert all(0 <= r["uar"] <= 100 for r in runs)
    assert [r["method"] for r in rec["tables"]["published"]][0] == "PE-CLIP"
