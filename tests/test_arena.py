"""The arena (clipadapt.arena): every registered method runs on the same tasks and is measured the same way; the
same seed gives the same table; counts follow the methods' formulas; the benchmark prints its ratios, saves the raw
timings and names what is missing."""
import json

import numpy as np
import pytest
import torch

from clipadapt import arena
from clipadapt.data import vtab
from clipadapt.engine import TrainSpec

QUICK = arena.ArenaConfig(shots=4, fit=TrainSpec(epochs=2, lr=3e-3, warmup=0.5, batch_size=16, eval_every=2,
                                                 eval_last=1))


@pytest.fixture(scope="module")
def digits():
    return vtab.load_task("digits", n_test=40)


def test_every_registered_method_runs_and_is_measured(digits):
    df = arena.run(list(arena.ARENA), [digits], seeds=(0,), cfg=QUICK, show_progress=False)
    assert list(df["method"]) == list(arena.ARENA)
    assert df["value"].between(0, 100).all() and (df["shots"] == 4).all()
    trains = df[df["method"] != "zero-shot"]
    assert (trains["trainable"] > 0).all() and (trains["train_mb"] > 0).all() and (trains["s_per_step"] > 0).all()
    zs = df.set_index("method").loc["zero-shot"]
    assert zs["trainable"] == 0 and zs["stored"] == 0 and np.isnan(zs["train_mb"])
    full = df.set_index("method").loc["full fine-tuning"]
    assert full["trainable"] == full["total"] == full["stored"]
    spt = df.set_index("method").loc["SPT-LoRA"]
    assert spt["stored"] > spt["trainable"], "sparse entries store their positions as well"


def test_same_seed_gives_the_same_table(digits):
    methods = ["LoRA", "MaPLe prompts"]
    a, b = (arena.run(methods, [digits], seeds=(1,), cfg=QUICK, show_progress=False) for _ in range(2))
    cols = ["method", "task", "seed", "value", "trainable", "stored", "train_mb"]
    assert a[cols].equals(b[cols])


def test_few_shot_takes_k_per_class_and_depends_on_the_seed():
    y = np.repeat(np.arange(5), 20)
    idx = arena.few_shot(y, 3, seed=0)
    assert np.bincount(y[idx]).tolist() == [3] * 5
    assert not np.array_equal(idx, arena.few_shot(y, 3, seed=1))
    assert len(arena.few_shot(np.array([0, 0, 1]), 5, 0)) == 3, "a class with fewer examples gives all it has"


def test_vlpet_gated_adapters_on_the_image_tower_count_and_gradients():
    # per PET module: a 4-head adapter (d -> r split over heads, r -> d) and a large gate (d -> r_g -> d); two per block
    from clipadapt.methods import vlpet
    from clipadapt.models.loader import load_backbone
    from clipadapt.models.vit import clip_image_tower
    vit = clip_image_tower(load_backbone("ci").model.visual, 10)
    d, depth = vit.embed_dim, len(vit.blocks)
    cfg = vlpet.VLPETConfig()
    r, h, rg = d // cfg.adapter_reduction, cfg.heads, d // cfg.gate_reduction
    pet = h * (d * r // h + r // h) + (r * d + d) + (d * rg + rg) + (rg * d + d)
    norms = sum(m.weight.numel() + m.bias.numel() for m in vit.modules() if isinstance(m, torch.nn.LayerNorm))
    vlpet.add_to_vit(vit, cfg)
    assert sum(p.numel() for p in vit.parameters() if p.requires_grad) == 2 * depth * pet + norms + (d * 10 + 10)


def test_unknown_method_names_the_known_ones(digits):
    with pytest.raises(ValueError, match="unknown method 'lorra'; did you mean lora"):
        arena.run(["lorra"], [digits], show_progress=False)
    with pytest.raises(ValueError, match="'batclip' is a registered method the arena does not run; the arena's rows: "
                                         "zero-shot"):
        arena.run(["batclip"], [digits], show_progress=False)
    with pytest.raises(ValueError, match="runs on both arena backbones"):
        arena.get_method("full-finetune")
    assert arena.get_method("lora").name == "LoRA"


def test_benchmark_names_the_method_a_ratio_needs():
    with pytest.raises(ValueError, match="needs the arena method 'SPT-LoRA'.*add it"):
        arena.benchmark(["zero-shot", "full fine-tuning", "full fine-tuning (CLIP)", "LoRA"], repeats=1)


def test_benchmark_prints_the_ratios_and_saves_raw_timings(tmp_path, capsys):
    out = tmp_path / "bench.json"
    methods = ["zero-shot", "SPT-LoRA", "full fine-tuning", "full fine-tuning (CLIP)", "LoRA", "MaPLe prompts"]
    assert arena.main(["bench", "--methods", *methods, "--repeats", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for ratio in ("BATCLIP s per batch / zero-shot s per batch", "TPT s per image / BATCLIP s per image",
                  "SPT sensitivity pass s / one training epoch s", "training memory / full fine-tuning: LoRA",
                  "training memory / full fine-tuning (CLIP): MaPLe prompts", "trainable / total parameters: LoRA"):
        assert ratio in printed
    saved = json.loads(out.read_text())
    assert {"BATCLIP s per batch", "zero-shot s per batch", "TPT s per image", "SPT sensitivity pass s"} <= set(saved["raw"])
    ratios = {r["ratio"]: r["value"] for r in saved["ratios"]}
    assert ratios["training memory / full fine-tuning: LoRA"] < 1, "LoRA holds less than full fine-tuning"
    assert ratios["BATCLIP s per batch / zero-shot s per batch"] > 1, "adapting costs more than inference"


def test_text_classifiers_refuse_tasks_without_class_names(digits):
    import dataclasses
    numbered = dataclasses.replace(digits, classes=tuple(str(i) for i in range(10)))
    with pytest.raises(ValueError, match=r"only label numbers.*zero-shot.*eurosat"):
        arena.run(["zero-shot", "LoRA"], [numbered], seeds=(0,), cfg=QUICK, show_progress=False)
    df = arena.run(["linear probe"], [numbered], seeds=(0,), cfg=QUICK, show_progress=False)   # a new head needs none
    assert len(df) == 1


def test_full_fine_tuning_trains_at_its_share_of_the_learning_rate(digits, monkeypatch):
    from clipadapt.arena import core
    seen, real = {}, core.fit_classifier

    def spy(model, train, test, cfg, **kw):
        seen[len(seen)] = cfg.lr
        return real(model, train, test, cfg, **kw)
    monkeypatch.setattr(core, "fit_classifier", spy)
    arena.run(["LoRA", "full fine-tuning", "full fine-tuning (CLIP)"], [digits], seeds=(0,), cfg=QUICK,
              show_progress=False)
    assert list(seen.values()) == pytest.approx([QUICK.fit.lr, QUICK.fit.lr * QUICK.full_lr_scale,
                                                 QUICK.fit.lr * QUICK.full_lr_scale])


def _changed(model, before):
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


def test_test_time_methods_on_top_adapt_only_their_layer_norms(digits):
    from clipadapt.models.loader import load_backbone
    clip = load_backbone("ci")
    size = clip.model.visual.image_size[0]
    x = torch.randn(8, 3, size, size)
    for name, kind, towers in (("zero-shot", "Tent", {"image"}), ("zero-shot", "BATCLIP", {"image", "text"}),
                               ("LoRA", "BATCLIP", {"image"}), ("LoRA", "none", set())):
        ctx = arena.Context(load_backbone("ci"), digits.classes, None, QUICK)
        model = arena.build(arena.get_method(name), ctx).model.eval()   # LoRA's dropout off, as OnTop sets it
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        with torch.no_grad():
            expected = model(x)
        on_top = arena.OnTop(model, kind, lr=1e-2)
        # predict, then adapt: the logits are those before the step (the view computes them by another path:
        # float32 rounding times the logit scale)
        torch.testing.assert_close(on_top(x), expected, rtol=1e-4, atol=1e-4)
        changed = _changed(model, before)
        assert all(n.rsplit(".", 2)[-2].startswith(("ln", "norm")) for n in changed), changed
        assert {"image" if (".visual." in n or name == "LoRA") else "text" for n in changed} == towers, (name, kind)
        if kind != "none":
            assert not torch.allclose(on_top(x), expected), "the second batch sees the adapted LayerNorms"
    with pytest.raises(ValueError, match="unknown test-time method 'tpt'; choose from none, Tent, BATCLIP"):
        arena.OnTop(model, "tpt")
    with pytest.raises(ValueError, match="unknown optimizer 'sgd' for test-time adaptation; use 'adamw' or 'adam'"):
        arena.OnTop(model, "Tent", optimizer="sgd")


def test_robustness_track_runs_every_test_time_method_on_every_adapted_model(digits):
    from clipadapt.data.microworld import LabelledSet
    from clipadapt.data.streams import GeneratedC
    rc = arena.RobustnessConfig(corruptions=("gaussian_noise", "contrast"), n_images=40, batch_size=20)
    with pytest.warns(UserWarning, match="no test-time adaptation on top of contrastive head"):
        df = arena.robustness(["zero-shot", "adapter", "MaPLe prompts", "contrastive head"], digits, seeds=(0,),
                              cfg=QUICK, rcfg=rc, show_progress=False)
    assert len(df) == 3 * 2 * 3 and set(df["test_time"]) == set(arena.TEST_TIME)
    assert df["accuracy"].between(0, 100).all() and (df["images"] == 40).all()
    again = arena.robustness(["adapter"], digits, seeds=(0,), cfg=QUICK, rcfg=rc, show_progress=False)
    cols = ["corruption", "test_time", "accuracy", "clean"]
    assert again[cols].reset_index(drop=True).equals(df[df.method == "adapter"][cols].reset_index(drop=True))
    other = GeneratedC(LabelledSet("x", digits.x_test, digits.y_test, tuple(reversed(digits.classes))))
    with pytest.raises(ValueError, match="other classes than task digits"):
        arena.robustness(["adapter"], digits, other, seeds=(0,), cfg=QUICK, rcfg=rc, show_progress=False)


def test_robustness_reads_the_paper_sources_on_local_stand_ins(tmp_path):
    # the chapter's paper data path: VTAB-1k's cifar task (CIFAR-100, its names from the registry) in the official
    # export layout, adapted few-shot, then CIFAR-100-C streams in the release layout; the ci CLIP stands in
    from PIL import Image

    from clipadapt.data import vtab
    from clipadapt.data.streams import ReleasedC
    from clipadapt.methods import batclip
    folder = tmp_path / "vtab-1k" / "cifar"
    for split, n in (("train800", 6), ("val200", 2), ("test", 4)):
        (folder / "images" / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((32, 32, 3), 30 * i, np.uint8)).save(folder / f"images/{split}/{i:06d}.jpg")
        (folder / f"{split}.txt").write_text("".join(f"images/{split}/{i:06d}.jpg {i % 3}\n" for i in range(n)))
    release = tmp_path / "CIFAR-100-C"
    release.mkdir()
    rng = np.random.default_rng(0)
    np.save(release / "gaussian_noise.npy", rng.integers(0, 255, (5 * 8, 32, 32, 3), dtype=np.uint8))
    np.save(release / "labels.npy", np.tile(np.arange(8) % 3, 5).astype(np.uint8))
    task = vtab.load_vtab1k("cifar", tmp_path)
    assert task.classes[:3] == ("apple", "aquarium fish", "baby") and len(task.classes) == 100
    rc = arena.RobustnessConfig(corruptions=("gaussian_noise",), n_images=8,
                                **{**batclip.PAPER_SETUPS["cifar100-c"], "batch_size": 4})
    df = arena.robustness(["zero-shot", "linear probe"], task, ReleasedC("cifar100-c", tmp_path), seeds=(0,),
                          cfg=QUICK, rcfg=rc, show_progress=False)
    assert len(df) == 2 * 3 and (df["images"] == 8).all() and df["accuracy"].between(0, 100).all()


def test_every_method_runs_on_face_clips():
    from clipadapt.data import clips
    task = clips.as_task(n_train=60, n_test=14, frames=5, seed=0)
    assert task.x_train.shape[1:] == (5, 48, 48, 3) and task.group == "video" and len(task.classes) == 7
    cfg = arena.ArenaConfig(shots=2, fit=TrainSpec(epochs=1, lr=3e-3, warmup=0.0, batch_size=8, eval_every=1,
                                                   eval_last=1))
    df = arena.run(list(arena.ARENA), [task], seeds=(0,), cfg=cfg, show_progress=False)
    assert list(df["method"]) == list(arena.ARENA) and df["value"].between(0, 100).all()
    assert (df[df["method"] != "zero-shot"]["train_mb"] > 0).all()


def test_frame_pooling_averages_the_frames_features_before_the_head():
    from torch.utils.data import TensorDataset

    from clipadapt.models.loader import load_backbone
    from clipadapt.models.vit import clip_image_tower
    vit = clip_image_tower(load_backbone("ci").model.visual, 7).eval()
    torch.nn.init.normal_(vit.head.weight)
    pooled = arena.FramePooled(vit)
    s = vit.patch_embed.img_size[0]
    x = torch.randn(3, 3, s, s)
    torch.testing.assert_close(pooled(x.unsqueeze(1).expand(3, 4, 3, s, s)), vit(x))   # T equal frames: the image
    feats = lambda z: vit.forward_head(vit.forward_features(z), pre_logits=True)
    torch.testing.assert_close(pooled(torch.stack([x, x.flip(0)], 1)), vit.head((feats(x) + feats(x.flip(0))) / 2))
    frames = arena.frames_of(TensorDataset(torch.zeros(2, 4, 3, s, s), torch.tensor([5, 6])))
    assert frames.tensors[0].shape == (8, 3, s, s) and frames.tensors[1].tolist() == [5] * 4 + [6] * 4


def test_text_head_rows_use_the_models_own_logit_scale(digits):
    """The arena's CLIP rows score cosines times the backbone's learned logit_scale, in training and in the
    test-time view (PE-CLIP's fixed temperature 0.01 belongs to its chapter), and both paths agree."""
    from clipadapt.models.loader import load_backbone
    ctx = arena.Context(load_backbone("ci"), digits.classes, None, QUICK)
    model = arena.build(arena.get_method("zero-shot"), ctx).model.eval()
    scale = ctx.clip.model.logit_scale.exp().item()
    assert abs(scale - 100) > 1, "the tiny CLIP's own scale differs from PE-CLIP's 100, or this test proves nothing"
    size = ctx.clip.model.visual.image_size[0]
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        logits = model(x)
        image, text = model.inner.features(x.unsqueeze(1))
        cos = torch.nn.functional.normalize(image, dim=-1) @ text.T
        torch.testing.assert_close(logits, scale * cos)
        torch.testing.assert_close(arena.feature_view(model)(x)[0], logits)


def test_methods_with_their_own_rate_groups_get_them_in_the_arena(digits):
    """PE-CLIP with prompts: adapters at the shared rate, the prompt learner at the official ratio (3e-5 / 2e-4);
    MaPLe's prompts alone at the shared rate; a method without groups of its own leaves the loop's groups."""
    from clipadapt.arena.core import own_groups
    from clipadapt.methods.peclip import PROMPT_LR_RATIO
    from clipadapt.models.loader import load_backbone
    lr = QUICK.fit.lr

    def groups(row):
        ctx = arena.Context(load_backbone("ci"), digits.classes, None, QUICK)
        return own_groups(arena.build(row, ctx), QUICK.fit)
    pe = groups(arena.ArenaMethod("PE-CLIP", "pe-clip", "CLIP"))
    assert [g["lr"] for g in pe] == pytest.approx([lr, lr * PROMPT_LR_RATIO])
    assert PROMPT_LR_RATIO == pytest.approx(0.15)
    maple = groups(arena.get_method("MaPLe prompts"))
    assert [g["lr"] for g in maple] == pytest.approx([lr])
    assert groups(arena.get_method("LoRA")) is None
