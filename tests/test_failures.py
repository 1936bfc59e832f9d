"""Failure injection: the cases of the reliability review (../shared/reference/reviews/reliability.md) that used to
return a wrong or degraded result without an error, each under its case id. Every one now gives a clear error or a
correct result. (The test-time methods' cases X6, X13, X13b, X15 and X16b are in test_tta.py.)"""
import json

import numpy as np
import pytest
import torch
from test_sweep import SWEEP, sweep_file  # noqa: F401 (the toy sweep and its fixture)

from clipadapt.results import STATUSES, RunRecord, load_record, reproduction_report, reproduction_row

# ---- results and records

def test_R3_a_missing_results_folder_or_an_unknown_profile_is_an_error_not_an_empty_report(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results folder at .*nowhere: build the book first"):
        reproduction_report(tmp_path / "nowhere", "ci")
    with pytest.raises(ValueError, match="unknown profile 'CI'"):
        reproduction_report(tmp_path, "CI")


@pytest.mark.parametrize("case, ours, published, status", [
    ("R4a", np.float32("nan"), 70.0, STATUSES[2]),
    ("R4b", torch.tensor(float("nan")), 70.0, STATUSES[2]),
    ("R4c", 70.2, np.float32(70.0), STATUSES[0]),
    ("R4d", 70.2, np.int64(70), STATUSES[0]),
    ("torch number", torch.tensor(74.0), 70.0, STATUSES[1]),
])
def test_R4_numpy_and_torch_numbers_are_numbers_in_the_reproduction_report(case, ours, published, status):
    row = reproduction_row("05_spt", "acc", published, "t1", ours)
    assert row["status"] == status, case
    assert json.dumps(row)   # plain Python numbers: the record stays valid JSON


def test_R4f_a_negative_tolerance_and_words_as_our_number_are_refused():
    with pytest.raises(ValueError, match="tolerance must be 0 or more"):
        reproduction_row("05_spt", "acc", 70.0, "t1", 70.2, tolerance=-1)
    with pytest.raises(TypeError, match="ours must be a number"):
        reproduction_row("05_spt", "acc", 70.0, "t1", "seventy")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), np.float32("nan"), "70"])
def test_R5_a_record_refuses_a_broken_metric_so_its_file_stays_strict_json(value):
    with pytest.raises(ValueError, match="metric 'acc' is"):
        RunRecord("07_x", "ci", 0).log("acc", value)


def test_R6_each_seed_has_its_own_record(tmp_path):
    for seed in (0, 1):
        rec = RunRecord("07_x", "ci", seed)
        rec.log("acc", 50.0 + seed)
        rec.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["07_x.ci.seed0.json", "07_x.ci.seed1.json"]
    assert load_record("07_x", "ci", tmp_path, seed=1)["metrics"]["acc"] == 51.0
    with pytest.raises(FileNotFoundError, match="07_x.ci.seed2.json"):
        load_record("07_x", "ci", tmp_path, seed=2)


@pytest.mark.parametrize("name", ["../escape", "a/b", ""])
def test_R7_a_record_name_with_a_path_is_refused(tmp_path, name):
    with pytest.raises(ValueError, match="plain name"):
        RunRecord(name, "ci", 0).save(tmp_path)
    assert not any(tmp_path.parent.glob("escape*"))


# ---- sweeps

@pytest.mark.parametrize("case, entry, message", [
    ("Q1", "params: {scael: 10}", r"no parameter 'scael' \(did you mean 'scale'\?\)"),
    ("Q6", "grid: {x: 2}", r"grid values of 'x' must be a non-empty list, e.g. \[2\]"),
    ("Q7", "params: {seed: 5}", r"`seed` is set by the sweep \(`seeds:` list\)"),
    ("seeds as one number", "seeds: 3", r"`seeds` must be a non-empty list of integers, got 3"),
])
def test_Q_a_sweep_file_with_a_wrong_parameter_is_refused_when_read(sweep_file, case, entry, message):
    from clipadapt import sweep
    sweep_file.write_text(SWEEP + f"  - notebook: toy\n    {entry}\n")
    with pytest.raises(ValueError, match=message):
        sweep.expand(sweep_file)


# ---- profiles

def test_P2c_the_paper_profile_without_a_gpu_stops_unless_the_cpu_is_asked_for(monkeypatch):
    from clipadapt.profiles import activate
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.delenv("CLIPADAPT_PAPER_ON_CPU", raising=False)
    with pytest.raises(RuntimeError, match="the paper profile needs a GPU.*CLIPADAPT_PAPER_ON_CPU=1"):
        activate("paper")
    monkeypatch.setenv("CLIPADAPT_PAPER_ON_CPU", "1")
    assert activate("paper").device == "cpu"
    assert activate("ci").device == "cpu"


# ---- class names, labels and image sets

def test_X14_X24_labels_beyond_the_class_names_are_refused(tiny):
    from types import SimpleNamespace

    from clipadapt.data.microworld import heldout_shapes
    from clipadapt.eval import zero_shot_accuracy
    from clipadapt.methods import build_method
    shapes = heldout_shapes(40)
    with pytest.raises(ValueError, match="labels run from 0 to .* but there are 3 class names"):
        type(shapes)("shapes, 3 names", shapes.images, shapes.labels, shapes.classes[:3])
    cut = SimpleNamespace(name="shapes, 3 names", images=shapes.images, labels=shapes.labels,
                          classes=shapes.classes[:3])   # a set of one's own, not a LabelledSet
    with pytest.raises(ValueError, match="labels run from 0 to .* but there are 3 class names"):
        zero_shot_accuracy(tiny.model, tiny.preprocess, tiny.tokenizer, cut)
    m = build_method("batclip", tiny.model, tiny.tokenizer, cut.classes)
    with pytest.raises(ValueError, match="but there are 3 class names"):
        m.run_stream(cut.images, cut.labels, 8, tiny.preprocess)


def test_D6_encoding_no_images_is_an_error(tiny):
    from clipadapt.eval import encode_images
    with pytest.raises(ValueError, match="no images to encode"):
        encode_images(tiny.model, tiny.preprocess, np.zeros((0, 32, 32, 3), np.uint8))


# ---- methods and their settings

@pytest.mark.parametrize("case, method, options, message", [
    ("F4b", "adapter", {"rank": 0}, "rank must be at least 1"),
    ("LoRA rank 0", "lora", {"rank": 0}, "rank must be at least 1"),
    ("SPT budget 0", "spt-lora", {"budget": 0}, "budget must be at least 1"),
    ("MaPLe depth 0", "maple", {"depth": 0}, "depth must be at least 1"),
])
def test_F4b_a_method_with_a_zero_size_setting_is_refused(case, method, options, message):
    from clipadapt.methods import method_class
    with pytest.raises(ValueError, match=message):
        method_class(method)(**options)


@pytest.mark.parametrize("case, reduction", [("V5", 1000), ("V4", 0)])
def test_V4_V5_a_vl_pet_bottleneck_of_zero_is_refused(case, reduction):
    from clipadapt.methods.vlpet import VLPETConfig, _make_pet
    with pytest.raises(ValueError, match="adapter_reduction must be between 1 and the model width 64"):
        _make_pet(VLPETConfig(adapter_reduction=reduction), 64)


def test_F18_A4_a_head_for_no_classes_and_no_shots_are_refused():
    from clipadapt.arena import few_shot
    from clipadapt.models.vit import load_vit
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        load_vit("ci", 0)
    for shots in (0, -1):
        with pytest.raises(ValueError, match="shots must be at least 1"):
            few_shot(np.array([0, 0, 1, 1]), shots, seed=0)


@pytest.mark.parametrize("case", ["C4b", "C9"])
def test_C4b_C9_a_contrastive_head_refuses_broken_embeddings_and_batches_of_one(case):
    from clipadapt.methods import contrastive_da as da
    x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    y = np.arange(40) % 2
    if case == "C4b":
        x[3, 1] = np.nan
        with pytest.raises(ValueError, match=r"1 embeddings hold NaN or infinity \(rows \[3\]"):
            da.train_head(x, y, da.HeadConfig(epochs=1))
    else:
        with pytest.raises(ValueError, match="batch_size must be at least 2"):
            da.train_head(x, y, da.HeadConfig(epochs=1, batch_size=1))


def test_D7a_a_fashion_mnist_folder_that_is_asked_for_but_empty_is_an_error(tmp_path, monkeypatch):
    from clipadapt.data.real import DatasetMissingError, fashion_mnist_dir
    monkeypatch.setenv("CLIPADAPT_FASHION_MNIST", str(tmp_path))
    with pytest.raises(DatasetMissingError, match="CLIPADAPT_FASHION_MNIST.*missing train-images-idx3-ubyte.gz"):
        fashion_mnist_dir()


# ---- caches

@pytest.fixture
def tiny_copy(tiny, tmp_path, monkeypatch):
    """The cached tiny CLIP's files copied into a scratch cache (the real cache is never touched)."""
    import shutil

    from clipadapt.models import pretrain
    src = pretrain.ensure_tiny_clip(show_progress=False)
    monkeypatch.setenv("CLIPADAPT_CACHE", str(tmp_path))
    dst = pretrain.tiny_checkpoint_path()
    dst.parent.mkdir(parents=True)
    for f in (src, pretrain.history_path(src), pretrain.digest_path(src)):
        shutil.copy2(f, dst.parent / f.name)
    monkeypatch.setattr(pretrain, "pretrain_tiny_clip", lambda *a, **k: pytest.fail("a silent retrain started"))
    return dst


@pytest.mark.parametrize("case", ["K1b", "K2"])
def test_K1b_K2_a_cut_short_or_replaced_tiny_clip_is_refused_with_the_rebuild_command(tiny_copy, case):
    from clipadapt.models import TINY_NAME, TINY_TAG, load_clip, pretrain
    from clipadapt.utils import ChecksumError
    data = tiny_copy.read_bytes()
    if case == "K1b":
        tiny_copy.write_bytes(data[:len(data) // 2])
    else:
        torch.manual_seed(1)
        torch.save(load_clip(TINY_NAME).model.state_dict(), tiny_copy)   # random weights under the cached name
    with pytest.raises(ChecksumError, match="(?s)does not match the sha256 recorded.*build_ci_assets.py --force"):
        pretrain.ensure_tiny_clip()
    with pytest.raises(ChecksumError, match="does not match"):
        load_clip(TINY_NAME, TINY_TAG)


def test_K3_a_tiny_clip_without_its_history_says_so_instead_of_retraining(tiny_copy):
    from clipadapt.models import pretrain
    from clipadapt.utils import ChecksumError
    pretrain.history_path(tiny_copy).unlink()
    with pytest.raises(ChecksumError, match="(?s)has no pretraining history.*build_ci_assets.py --force"):
        pretrain.ensure_tiny_clip()


def test_K4d_K5_embeddings_are_keyed_by_the_weights_and_broken_ones_are_refused(tiny_copy):
    from clipadapt import embeddings
    from clipadapt.models import pretrain
    enc = embeddings.load_encoder("clipadapt-tiny")
    assert pretrain.digest_path(tiny_copy).read_text()[:12] in enc.fingerprint   # K5: a rebuilt model, a new key
    imgs = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    path = embeddings.cache_path(enc, imgs)
    x = embeddings.cached(enc, imgs, show_progress=False)
    np.save(path, np.full_like(x, np.nan))
    with pytest.raises(embeddings.EmbeddingFileError, match="NaN or infinite embeddings in 4 rows"):
        embeddings.cached(enc, imgs, show_progress=False)


# ---- installs anywhere

def test_the_book_finds_its_folder_after_a_plain_install(tmp_path, monkeypatch):
    from clipadapt import book, layout
    (tmp_path / "repo" / "notebooks").mkdir(parents=True)
    (tmp_path / "repo" / "_toc.yml").write_text("root: book/intro\n")
    monkeypatch.setattr(layout, "__file__", str(tmp_path / "site-packages" / "clipadapt" / "layout.py"))
    monkeypatch.chdir(tmp_path / "repo" / "notebooks")
    assert book.find_root() == tmp_path / "repo"
    monkeypatch.setenv("CLIPADAPT_ROOT", str(tmp_path / "elsewhere"))
    assert book.find_root() == tmp_path / "elsewhere"
    with pytest.raises(FileNotFoundError, match="no notebooks/ folder under .*elsewhere: run from the repository"):
        book.notebooks(tmp_path / "elsewhere")


def test_torch_is_a_range_for_users_and_pinned_for_ci():
    import tomllib

    from clipadapt.book import ROOT
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_deps = [d for d in deps if d.startswith(("torch>", "torch=", "torchvision"))]
    assert len(torch_deps) == 2 and not any("==" in d for d in torch_deps), torch_deps
    pins = (ROOT / "constraints.txt").read_text()
    assert "torch==" in pins and "torchvision==" in pins
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def test_the_publishing_workflow_passes_actionlint():
    """.github/workflows/book.yml: build on ci and deploy to Pages on a release tag; the paper sweep on a self-hosted
    GPU runner by hand. actionlint checks its syntax, expressions, runner labels and the actions' versions."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from clipadapt.book import ROOT
    exe = shutil.which("actionlint", path=str(Path(sys.executable).parent))
    assert exe, "actionlint is a test dependency: make env installs it"
    res = subprocess.run([exe, str(ROOT / ".github" / "workflows" / "book.yml")], cwd=ROOT, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# ---- found by reading the code

def test_dfer_training_clips_draw_new_frames_in_every_worker_and_epoch(tmp_path):
    """The paper loader kept one generator in the Dataset: every DataLoader worker, and every epoch, drew the same
    frame offsets. Frame k of the fake clip is filled with the value k, so a video shows which frames were drawn."""
    from PIL import Image

    from clipadapt.data.dfer import VideoFiles
    clip = tmp_path / "clip"
    clip.mkdir()
    for k in range(64):
        Image.fromarray(np.full((4, 4, 3), k, np.uint8)).save(clip / f"{k:03d}.png")
    ds = VideoFiles([clip], [0], lambda im: torch.as_tensor(np.array(im))[0, 0, :1].float(), segments=8, train=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, sampler=[[0]] * 4, num_workers=2)

    def epoch(seed):
        torch.manual_seed(seed)
        return [tuple(v[0, :, 0].int().tolist()) for v, _ in loader]
    first, second = epoch(0), epoch(1)
    assert len(set(first)) == 4, first                  # the two workers (two draws each) all differ
    assert set(first).isdisjoint(second), (first, second)   # and a new epoch draws anew
    assert epoch(0) == first                             # the same seed gives the same frames
    test = VideoFiles([clip], [0], ds.transform, segments=8)
    assert test[[0]][0].equal(test[[0]][0])              # evaluation takes each segment's centre frame


# ---- found by reading the code (issue 24, item 7)

def test_corrupting_a_batch_leaves_the_callers_global_numpy_generator_as_it_was():
    from clipadapt.data.corruptions import corrupt_batch
    images = np.full((3, 16, 16, 3), 128, np.uint8)
    np.random.seed(123)
    expected = np.random.random(4)
    np.random.seed(123)
    first = corrupt_batch(images, "gaussian_noise", 3, seed=7)
    assert np.array_equal(np.random.random(4), expected), "the caller's draws changed"
    assert np.array_equal(corrupt_batch(images, "gaussian_noise", 3, seed=7), first), "same seed, same images"
    assert not np.array_equal(corrupt_batch(images, "gaussian_noise", 3, seed=8), first)


def test_classifiers_that_stop_short_of_convergence_are_reported_not_hidden():
    from clipadapt.methods import contrastive_da as da
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 40)), np.arange(60) % 3
    feats = da.Represented(x, x, 0, 0.0, [])
    rows = {r["classifier"]: r for r in da.evaluate(feats, y, y, names=["MLP", "CART"])}
    assert rows["MLP"]["converged"] is False   # 200 iterations of Adam on noise: sklearn warns, the row says so
    assert rows["CART"]["converged"] is True
