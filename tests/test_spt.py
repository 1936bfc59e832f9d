"""SPT: sensitivity, budget allocation (alpha, beta), the trainable set, and the fine-tuning backbone and suite."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import TensorDataset

from clipadapt.chapters import spt as spt_chapter
from clipadapt.methods import build_method, spt

DIM, DEPTH = 32, 2


def _vit(seed=0, num_classes=3):
    torch.manual_seed(seed)
    return VisionTransformer(img_size=16, patch_size=8, embed_dim=DIM, depth=DEPTH, num_heads=2, num_classes=num_classes)


def _data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 3, (n,), generator=g)


def _ds(n=24, seed=0):
    return TensorDataset(*_data(n, seed))


def _top_counts(scores, tau):
    names = list(scores)
    flat = torch.cat([scores[n].flatten() for n in names])
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.from_numpy(np.argsort(-flat.numpy(), kind="stable")[:tau].copy())] = True
    out, i = {}, 0
    for n in names:
        out[n] = int(mask[i:i + scores[n].numel()].sum())
        i += scores[n].numel()
    return out


def test_sensitivity_is_the_sum_of_squared_gradients_and_leaves_the_model_alone():
    model = _vit()
    x, y = _data()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.eval()
    s = spt.sensitivity(model, TensorDataset(x, y), batch_size=8, n_batches=2)
    assert set(s) == set(spt.ranked_parameters(model))
    assert not any(k in n for n in s for k in ("head", "cls_token", "patch_embed", "pos_embed"))
    ref = {n: torch.zeros_like(p) for n, p in spt.ranked_parameters(model).items()}
    model.train()
    for b in range(2):   # by hand: per-batch gradients, squared, summed
        grads = torch.autograd.grad(F.cross_entropy(model(x[8 * b:8 * b + 8]), y[8 * b:8 * b + 8]),
                                    list(spt.ranked_parameters(model).values()))
        for (n, _), g in zip(spt.ranked_parameters(model).items(), grads):
            ref[n] += g ** 2
    assert all(torch.allclose(s[n], ref[n], rtol=1e-5, atol=1e-12) for n in s)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("kind", ["lora", "adapter"])
@pytest.mark.parametrize("budget", [1_500, 3_000, 4_500])
def test_allocation_meets_the_budget_and_follows_alpha_and_beta(kind, budget):
    model = _vit()
    scores = spt.sensitivity(model, _ds())
    a = spt.allocate(model, scores, budget, kind=kind, rank=4)
    costs = [spt.structured_cost(m, kind, 4) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    # SPT picks the tau whose total is closest: off by at most half of one structured module
    assert abs(a.params - budget) <= max(costs) / 2 + 1, (a.params, budget)
    c = _top_counts(scores, a.tau)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for name, count in c.items():
        module = name.rsplit(".", 1)[0]
        if scores[name].dim() == 1:      # beta: a vector is tuned fully iff >= 1/5 of it is sensitive
            full = count >= scores[name].numel() / 5
            assert (name in a.vectors) == full, name
            # below that, a Linear's bias trains its sensitive entries (the official sparse-gradient Linear), a
            # LayerNorm vector nothing
            assert (name in a.sparse) == (not full and count > 0 and module in linears), name
            if name in a.sparse:
                assert len(a.sparse[name]) == count
        elif module in linears:          # alpha: structured iff >= cost/10 sensitive entries
            structured = count > 0 and count >= spt.structured_cost(linears[module], kind, 4) / 10
            assert (module in a.structured) == structured, name
            assert (name in a.sparse) == (not structured and count > 0), name
            if name in a.sparse:
                assert len(a.sparse[name]) == count
    counted = (sum(a.cost[m] for m in a.structured) + a.sparse_params + model.cls_token.numel()
               + sum(scores[v].numel() for v in a.vectors))
    assert a.params == counted


def test_alpha_extremes_give_unstructured_only_and_structured_only():
    model = _vit()
    scores = spt.sensitivity(model, _ds())
    un = spt.allocate(model, scores, 2_500, alpha=0)
    assert un.structured == [] and abs(un.params - 2_500) <= 1
    st = spt.allocate(model, scores, 2_500, alpha=float("inf"))
    assert st.sparse == {} and st.structured


def test_only_the_allocated_entries_and_modules_change_in_training():
    model = _vit()
    x, y = _data()
    scores = spt.sensitivity(model, TensorDataset(x, y))
    a = spt.allocate(model, scores, 2_500, rank=4)
    assert a.structured and a.sparse, "the test needs both kinds of tuning"
    assert any(n.endswith(".bias") for n in a.sparse), "the test needs a sparse bias"
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    spt.apply_allocation(model, a)
    assert spt.backbone_trainable(model) == a.params
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        for name, p in original.items():
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            if module_name in a.structured:   # peft's LoRA layer around the original Linear
                module = module.base_layer
            if name in a.sparse:   # effective weight differs exactly at the chosen entries (at most)
                changed = (module.effective(attr) != p).flatten().nonzero().flatten()
                assert set(changed.tolist()) <= set(a.sparse[name].tolist()) and len(changed) > 0
                assert torch.equal(getattr(module, attr), p)
            elif name in a.vectors or name.startswith("head") or name == "cls_token":
                continue
            elif module_name in a.structured:   # the wrapped Linear's own weights stay frozen
                assert torch.equal(model.get_submodule(module_name).base_layer.get_parameter(attr), p)
            else:
                assert torch.equal(model.get_parameter(name), p), name
    lora = [n for n, p in model.named_parameters() if "lora_B" in n]
    assert lora and all(model.get_parameter(n).abs().sum() > 0 for n in lora)   # LoRA B left zero init


def test_bad_budgets_and_kinds_are_refused():
    model = _vit()
    scores = spt.magnitude_scores(model)
    with pytest.raises(ValueError, match="too small: the class token alone takes 32"):
        spt.allocate(model, scores, 10)
    with pytest.raises(ValueError, match="more than SPT can spend on this model"):
        spt.allocate(model, scores, 10**6)
    with pytest.raises(ValueError, match="unknown structured kind 'prefix'"):
        spt.allocate(model, scores, 2_500, kind="prefix")
    r1, r2 = spt.random_scores(model, 0), spt.random_scores(model, 0)
    assert all(torch.equal(r1[n], r2[n]) for n in r1)


def test_tiny_clip_image_tower_converts_to_timm_exactly(tiny):
    from clipadapt.models.vit import clip_image_tower
    visual = tiny.model.visual
    vit = clip_image_tower(visual, visual.proj.shape[1])
    with torch.no_grad():   # put CLIP's projection back as the head: timm must then compute encode_image
        vit.head.weight.copy_(visual.proj.T)
        vit.head.bias.zero_()
        x = torch.randn(3, 3, 48, 48)
        assert torch.allclose(vit.eval()(x), tiny.model.encode_image(x), atol=1e-4)


@pytest.mark.parametrize("name", ["fashion-mnist", "digits", "textile", "noisy-fashion", "orientation", "tilt"])
def test_vtab_style_tasks_have_vtab1k_splits(name):
    from clipadapt.data import vtab
    t = vtab.load_task(name, n_test=100)
    assert len(t.x_train) == 800 and len(t.x_val) == 200 and len(t.x_test) == 100
    assert t.x_train.dtype == np.uint8 and t.x_train.shape[-1] == 3
    assert set(np.unique(t.y_trainval)) <= set(range(len(t.classes))) and len(np.unique(t.y_train)) > 1
    assert np.array_equal(vtab.load_task(name, n_test=100).y_test, t.y_test)
    with pytest.raises(ValueError, match="unknown task"):
        vtab.load_task("sun397")


def test_ci_backbone_is_a_fresh_copy_with_the_task_head_and_paper_names_are_checked(tiny):
    from clipadapt.models.vit import load_vit
    a, b = load_vit("ci", 3), load_vit("ci", 5)
    assert a.model.head.out_features == 3 and b.model.head.out_features == 5
    assert a.model.blocks[0].attn.qkv.weight is not b.model.blocks[0].attn.qkv.weight
    assert a.preprocess(np.zeros((2, 28, 28, 3), np.uint8)).shape == (2, 3, 48, 48)
    with pytest.raises(ValueError, match="unknown timm model 'vit_nonexistent'"):
        load_vit("paper", 3, paper_model="vit_nonexistent")


def test_every_method_prepares_and_the_suite_runs_with_vtab_means():
    from timm.data import create_transform

    from clipadapt.data.vtab import Task
    from clipadapt.engine import TrainSpec
    from clipadapt.models.vit import LoadedViT
    rng = np.random.default_rng(0)

    def task(name, group):
        x = rng.integers(0, 255, (30, 16, 16, 3), dtype=np.uint8)
        y = rng.integers(0, 3, 30)
        return Task(name, group, ("a", "b", "c"), x[:16], y[:16], x[16:20], y[16:20], x[20:], y[20:])

    load = lambda n: LoadedViT(_vit(num_classes=n), create_transform(input_size=(3, 16, 16), crop_pct=1.0), "test")
    for m in spt.PEFT_METHODS:
        info = spt.prepare(m, _vit(), _ds(), budget=2_000, rank=4)
        assert info["trainable"] > 0 or m == "linear-probe", m
    with pytest.raises(ValueError, match="unknown method 'spt'"):
        spt.prepare("spt", _vit(), _ds())
    default = spt.prepare("spt-lora", _vit(), _ds(), rank=4)   # no budget: what LoRA of the rank trains
    lora = spt.lora_budget(_vit(), 4)
    assert abs(default["allocation"].params - lora) <= 0.05 * lora, (default["allocation"].params, lora)
    tasks = [task("t1", "natural"), task("t2", "structured")]
    methods = {"SPT": {"method": "spt-lora", "budget": 2_000, "rank": 4}, "linear": {"method": "linear-probe", "seeds": [0]}}
    df, allocs = spt_chapter.suite_benchmark(load, tasks, methods, seeds=(0, 1), fit_cfg=TrainSpec(epochs=2, warmup=0.5),
                                     show_progress=False)
    assert len(df) == 2 * 2 + 2 and set(allocs) == {(t, "SPT", s) for t in ("t1", "t2") for s in (0, 1)}
    vm = spt_chapter.vtab_mean(df)
    row = df[(df.method == "SPT") & (df.seed == 0)]
    assert vm[("SPT", 0)] == pytest.approx(row.best.mean())   # one task per group: mean of groups = mean of tasks
    spent, structured = spt_chapter.allocation_grid(allocs[("t1", "SPT", 0)], DEPTH)
    a = allocs[("t1", "SPT", 0)]
    outside = 32 + sum(a.cost[v] for v in a.vectors if not v.startswith("blocks."))   # class token, final norm
    assert int(spent.values.sum()) == a.params - outside and structured.values.sum() == len(a.structured)


def test_vtab1k_loader_reads_the_official_export_layout(tmp_path):
    # the paper profile's data path, on a few fake JPEGs in the layout of the official export
    from clipadapt.data import vtab
    from clipadapt.data.real import DatasetMissingError
    _fake_vtab1k(tmp_path, "eurosat", (("train800", 4), ("val200", 2), ("test", 3)), n_classes=10)
    t = vtab.load_vtab1k("eurosat", root=tmp_path)
    assert (t.group, len(t.classes)) == ("specialized", 10)
    assert t.classes[:2] == ("annual crop land", "forest") and vtab.has_class_names(t)   # clip_benchmark's names
    assert vtab.vtab1k_classnames("dtd") == tuple(str(i) for i in range(47))             # none there: label numbers
    assert all(len(vtab.vtab1k_classnames(n)) == vtab.VTAB1K[n][1] for n in vtab.CLASSNAMES_KEY)
    assert len(t.x_train) == 4 and len(t.x_trainval) == 6 and t.y_trainval.tolist() == [0, 1, 2, 3, 0, 1]
    img = t.x_test[2]
    assert img.shape == (40, 30, 3) and abs(int(img.mean()) - 40) <= 2
    from timm.data import create_transform

    from clipadapt.models.vit import LoadedViT
    x = LoadedViT(_vit(), create_transform(input_size=(3, 16, 16), crop_pct=1.0), "test").preprocess(t.x_trainval)
    assert x.shape == (6, 3, 16, 16)
    with pytest.raises(DatasetMissingError, match="prepare_vtab1k.py --task dtd --root"):
        vtab.load_vtab1k("dtd", root=tmp_path)
    with pytest.raises(ValueError, match="unknown VTAB-1k task 'cifar10'"):
        vtab.load_vtab1k("cifar10", root=tmp_path)
    assert len(vtab.VTAB1K) == 19 and {g for g, _ in vtab.VTAB1K.values()} == set(vtab.GROUPS)


def test_lazy_files_and_in_memory_images_train_identically_with_the_official_eval_cadence(tmp_path):
    # the paper profile reads and transforms files per batch, ci preprocesses arrays once: same loop, same numbers
    from PIL import Image
    from timm.data import create_transform

    from clipadapt.data.registry import ImageFiles
    from clipadapt.engine import TrainSpec
    from clipadapt.finetune import ImageSet, fit_classifier
    from clipadapt.models.vit import LoadedViT
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (20, 16, 16, 3), dtype=np.uint8)
    y = rng.integers(0, 3, 20)
    paths = []
    for i, im in enumerate(x):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(im).save(paths[-1])
    lv = LoadedViT(_vit(), create_transform(input_size=(3, 16, 16), crop_pct=1.0), "test")
    mem, lazy = lv.dataset(x, y), lv.dataset(ImageFiles(paths), y)
    assert isinstance(mem, TensorDataset) and isinstance(lazy, ImageSet)
    cfg = TrainSpec(epochs=6, warmup=1 / 6, batch_size=8, eval_every=4, eval_last=2)
    runs = []
    for data in (mem, lazy):
        model = _vit()
        build_method("lora", rank=2).apply(model)
        runs.append(fit_classifier(model, data, data, cfg))
    assert [h["epoch"] for h in runs[0]["history"] if "test_acc" in h] == [4, 5, 6]   # every 4th and the last 2
    assert runs[0]["history"] == runs[1]["history"]
    assert np.isnan(runs[0]["peak_mem_mb"])   # peak memory is a GPU measurement
    with pytest.raises(ValueError, match="20 images but 3 labels"):
        ImageSet(x, y[:3], lv.transform)


def test_a_list_of_budgets_is_chosen_on_val200_then_trained_on_train_plus_val(monkeypatch):
    from timm.data import create_transform

    from clipadapt.data.vtab import Task
    from clipadapt.models.vit import LoadedViT
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 255, (30, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, 30)
    task = Task("t", "natural", ("a", "b", "c"), x[:16], y[:16], x[16:20], y[16:20], x[20:], y[20:])
    calls = []

    def fake_fit(model, train, test, cfg):   # val score grows with the trainable count: the largest budget wins
        calls.append((len(train), len(test), spt.backbone_trainable(model)))
        return {"best": float(calls[-1][2]), "last": 0.0, "s_per_step": 0.0, "s_per_epoch": 0.0, "peak_mem_mb": 0.0}
    monkeypatch.setattr(spt_chapter, "fit_classifier", fake_fit)
    load = lambda n: LoadedViT(_vit(num_classes=n), create_transform(input_size=(3, 16, 16), crop_pct=1.0), "test")
    df, _ = spt_chapter.suite_benchmark(load, [task], {"SPT": {"method": "spt-lora", "budget": [1_000, 3_000], "rank": 4}},
                                show_progress=False)
    assert [c[:2] for c in calls] == [(16, 4), (16, 4), (20, 10)]   # two candidates on train800/val200, then the test
    assert df.budget.tolist() == [3_000] and abs(calls[-1][2] - 3_000) < 0.05 * 3_000   # re-ranked on train+val


def _fake_vtab1k(root, task, sizes=(("train800", 8), ("val200", 4), ("test", 6)), n_classes=3):
    from PIL import Image
    folder = root / "vtab-1k" / task
    for split, n in sizes:
        (folder / "images" / split).mkdir(parents=True)
        lines = []
        for i in range(n):
            rel = f"images/{split}/{i:06d}.jpg"
            Image.fromarray(np.full((40, 30, 3), 20 * i, np.uint8)).save(folder / rel)
            lines.append(f"{rel} {i % n_classes}")
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")


def test_paper_checkpoint_loads_from_a_local_file_with_spts_transform(tmp_path):
    import timm

    from clipadapt.models.vit import load_vit
    ref = timm.create_model("vit_tiny_patch16_224.augreg_in21k", pretrained=False)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    lv = load_vit("paper", 7, "vit_tiny_patch16_224.augreg_in21k", device="cpu", checkpoint=tmp_path / "w.pth")
    got = lv.model.state_dict()
    assert all(torch.equal(v, got[k]) for k, v in ref.state_dict().items() if not k.startswith("head"))
    assert lv.model.head.out_features == 7 and lv.model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)   # stochastic depth up to 0.1
    x = lv.preprocess(np.zeros((1, 40, 30, 3), np.uint8))   # a direct resize to 224 x 224, ImageNet mean and std
    assert x.shape == (1, 3, 224, 224) and x[0, 0, 0, 0].item() == pytest.approx(-0.485 / 0.229, rel=1e-4)
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_vit("paper", 7, "vit_tiny_patch16_224.augreg_in21k", checkpoint=tmp_path / "nothing.pth")


@pytest.mark.slow
def test_chapter_paper_branch_runs_on_stand_ins(tmp_path, monkeypatch):
    # the paper profile's whole chapter path (VTAB-1k and FGVC readers, budget choice on val200, published-vs-ours
    # table) on fake files in the official layouts and a small local checkpoint; numbers are meaningless here
    import timm
    from scipy.io import savemat

    from clipadapt import book
    from clipadapt.data import fgvc
    from clipadapt.results import load_record
    for task in ("eurosat", "dsprites_loc"):
        _fake_vtab1k(tmp_path, task)
    fl = tmp_path / "fgvc/oxford_flowers/source"
    (fl / "jpg").mkdir(parents=True)
    from PIL import Image
    for i in range(1, 13):
        Image.fromarray(np.full((30, 40, 3), 10 * i, np.uint8)).save(fl / "jpg" / f"image_{i:05d}.jpg")
    savemat(fl / "imagelabels.mat", {"labels": np.array([[1, 2, 3] * 4])})
    savemat(fl / "setid.mat", {"trnid": np.arange(1, 7)[None], "valid": np.arange(7, 9)[None],
                               "tstid": np.arange(9, 13)[None]})
    fgvc.write_splits("oxford_flowers", tmp_path)
    torch.save(timm.create_model("test_vit.r160_in1k", pretrained=False).state_dict(), tmp_path / "w.pth")
    monkeypatch.setenv("CLIPADAPT_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("CLIPADAPT_RERUN", "1")   # the paper path runs on every test run, not from the cache
    book.run_notebook(book.ROOT / "notebooks" / "05_spt.ipynb", profile="paper", out_dir=tmp_path / "out",
                      epochs=1, budget=[20_000, 40_000], vtab_tasks=["eurosat", "dsprites_loc"],
                      fgvc_datasets=["oxford_flowers"], model="test_vit.r160_in1k",
                      checkpoint=str(tmp_path / "w.pth"), data_root=str(tmp_path), num_workers=0)
    rec = load_record("05_spt", "paper", tmp_path / "results")
    runs = rec["tables"]["runs"]
    assert {r["task"] for r in runs} == {"eurosat", "dsprites_loc", "oxford_flowers"}
    assert {r["budget"] for r in runs if r["method"] == "SPT-LoRA"} <= {20_000, 40_000}
    assert all(0 <= r["best"] <= 100 for r in runs) and len({r["method"] for r in runs}) == 10
