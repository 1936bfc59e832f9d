"""Checkpoints per method and seed: a job is stored atomically with its trained weights, read back instead of
trained, keyed so a changed set-up or package never loads it, and a stopped chapter run resumes where it stopped."""
import copy
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from clipadapt.checkpoints import JobStore, load_weights, trained_weights


def _trained_model(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    m[0].requires_grad_(False)
    return m


def test_a_job_is_stored_with_only_its_trained_weights_and_read_back_instead_of_trained(tmp_path):
    store, calls = JobStore(tmp_path / "jobs"), []

    def train():
        calls.append(1)
        return {"acc": 71.5, "loss": [1.0, 0.5]}, _trained_model(), {"allocation": {"a": 3}}
    first, stored = store.run(("task 1", "spt-lora", 0), train)
    again, stored_again = store.run(("task 1", "spt-lora", 0), train)
    assert (stored, stored_again, len(calls), store.count()) == (False, True, 1, 1)
    assert again["row"] == first["row"] == {"acc": 71.5, "loss": [1.0, 0.5]} and again["allocation"] == {"a": 3}
    assert set(again["weights"]) == {"1.weight", "1.bias"}   # the frozen layer is not kept
    assert store.path("task 1", "spt-lora", 0).name == "task_1.spt-lora.0.pt"
    assert store.path("task 1", "spt-lora", 0).with_suffix(".json").exists()
    fresh = _trained_model(seed=1)
    load_weights(fresh, again["weights"])
    assert torch.equal(fresh[1].weight, _trained_model()[1].weight)


def test_without_a_folder_every_job_trains_and_nothing_is_written(tmp_path):
    store, calls = JobStore(None), []
    for _ in range(2):
        store.run(("a",), lambda: (calls.append(1), ({"x": 1}, None, {}))[1])
    assert len(calls) == 2 and store.count() == 0


def test_loading_weights_the_model_lacks_or_of_another_shape_is_an_error_that_says_so():
    weights = trained_weights(_trained_model())
    with pytest.raises(KeyError, match="weights the model lacks: 1.bias, 1.weight; build the model"):
        load_weights(nn.Sequential(nn.Linear(3, 4)), weights)
    other = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 3))
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match=r"1.weight has shape \(2, 4\), the model's is \(3, 4\): build"):
        load_weights(other, weights)
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in before.items()), "a refused load changes nothing"


def test_an_interrupted_write_leaves_no_job(tmp_path, monkeypatch):
    store = JobStore(tmp_path)

    def broken_save(obj, path):
        open(path, "wb").write(b"half")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        store.put("a", row={"x": 1}, model=_trained_model())
    assert store.get("a") is None and store.count() == 0


def test_the_store_is_keyed_by_the_setup_and_the_code_and_rerun_reads_nothing(monkeypatch):
    from clipadapt.chapters import core
    from clipadapt.results import RunRecord

    @dataclass(frozen=True)
    class Setup:
        profile: str = "ci"
        seed: int = 0
        epochs: int = 3
    a = core.Result(RunRecord("99_demo", "ci", 0), Setup())
    b = core.Result(RunRecord("99_demo", "ci", 0), Setup(epochs=4))
    folder = a.jobs.folder
    assert folder != b.jobs.folder and folder.name.startswith("99_demo.ci.")
    monkeypatch.setattr(core, "code_hash", lambda: "another-code")
    assert a.jobs.folder != folder
    monkeypatch.setenv("CLIPADAPT_RERUN", "1")
    assert a.jobs.folder is None


def test_an_spt_suite_stopped_part_way_resumes_without_retraining_finished_jobs(tmp_path, monkeypatch):
    from test_spt import _vit
    from timm.data import create_transform

    from clipadapt.chapters import spt as spt_chapter
    from clipadapt.data.vtab import Task
    from clipadapt.engine import TrainSpec
    from clipadapt.models.vit import LoadedViT
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 255, (30, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, 30)
    tasks = [Task("t1", "natural", ("a", "b", "c"), x[:16], y[:16], x[16:20], y[16:20], x[20:], y[20:])]
    load = lambda n: LoadedViT(_vit(num_classes=n), create_transform(input_size=(3, 16, 16), crop_pct=1.0), "t")  # noqa
    methods = {"SPT": {"method": "spt-lora", "budget": 2_000, "rank": 4}, "LoRA": {"method": "lora", "rank": 2}}
    args = dict(seeds=(0, 1), fit_cfg=TrainSpec(epochs=2, warmup=0.5), show_progress=False)
    full, allocs = spt_chapter.suite_benchmark(load, tasks, methods, **args)

    real, fits = spt_chapter.fit_classifier, []

    def stops_after_two(*a, **k):
        if len(fits) == 2:
            raise KeyboardInterrupt   # the machine goes away during the third job
        fits.append(1)
        return real(*a, **k)
    store = JobStore(tmp_path / "jobs")
    monkeypatch.setattr(spt_chapter, "fit_classifier", stops_after_two)
    with pytest.raises(KeyboardInterrupt):
        spt_chapter.suite_benchmark(load, tasks, methods, store=store, **args)
    assert store.count() == 2
    fits.clear()
    monkeypatch.setattr(spt_chapter, "fit_classifier", lambda *a, **k: (fits.append(1), real(*a, **k))[1])
    resumed, resumed_allocs = spt_chapter.suite_benchmark(load, tasks, methods, store=store, **args)
    assert len(fits) == 2, "only the two jobs that had not finished train again"
    cols = ["task", "method", "seed", "budget", "trainable", "best", "last"]
    assert resumed[cols].equals(full[cols]) and set(resumed_allocs) == set(allocs)
    assert resumed_allocs[("t1", "SPT", 0)].sparse.keys() == allocs[("t1", "SPT", 0)].sparse.keys()


def test_a_vl_comparison_reads_stored_jobs_and_rebuilds_the_kept_model(tmp_path, monkeypatch):
    from test_vlpet import small_vl

    from clipadapt import vltrain
    from clipadapt.models import seq2seq
    model0, split, feats = small_vl()
    data = {"train": split, "train_feats": feats, "test": split, "test_feats": feats}
    args = dict(seeds=(0,), cfg=vltrain.recipe(epochs=1, batch_size=8), show_progress=False, keep=["vl-pet-large"],
                decode=vltrain.Decoding(num_beams=1, max_new_tokens=4), store=JobStore(tmp_path))
    first = vltrain.compare(lambda: copy.deepcopy(model0), data, ["vl-pet-large", "bitfit"], **args)
    monkeypatch.setattr(vltrain, "train_vl", lambda *a, **k: pytest.fail("a stored job trained again"))
    again = vltrain.compare(lambda: copy.deepcopy(model0), data, ["vl-pet-large", "bitfit"], **args)
    cols = ["method", "seed", "average", "trainable", "loss"]
    assert again[cols].equals(first[cols])
    batch = seq2seq.collate(split.examples[:4], feats, model0.tokenizer)
    with torch.no_grad():
        assert torch.equal(again.model[0](batch), first.model[0](batch)), "the kept model is the trained one"


def test_an_arena_run_reads_stored_jobs_back_with_their_weights(tmp_path, monkeypatch):
    from clipadapt import arena
    from clipadapt.arena import core as arena_core
    from clipadapt.data import vtab
    from clipadapt.engine import TrainSpec
    task = vtab.load_task("digits", n_test=20)
    cfg = arena.ArenaConfig(shots=2, fit=TrainSpec(epochs=1, lr=3e-3, warmup=0.0, batch_size=16, eval_every=1))
    store = JobStore(tmp_path)
    first = arena.run(["LoRA", "zero-shot"], [task], seeds=(0,), cfg=cfg, show_progress=False, store=store, key=("k",))
    assert store.path("k", "digits", "LoRA", 0).exists() and store.get("k", "digits", "zero-shot", 0)["weights"] == {}
    weights = store.get("k", "digits", "LoRA", 0)["weights"]
    assert any("lora" in n for n in weights)
    assert sum(w.numel() for w in weights.values()) == first.set_index("method").loc["LoRA", "trainable"]
    monkeypatch.setattr(arena_core, "fit_classifier", lambda *a, **k: pytest.fail("a stored job trained again"))
    again = list(arena_core._runs(["LoRA"], [task], (0,), cfg, "ci", False, store=store,
                                  key=("k",)))
    (_, _, _, built, row), = again
    assert row["value"] == first.set_index("method").loc["LoRA", "value"]
    model = dict(built.model.named_parameters())
    assert all(torch.equal(model[n], w) for n, w in weights.items()), "the adapted model carries the stored weights"


def test_a_finished_chapter_run_removes_its_checkpoints_unless_asked_to_keep_them(tmp_path, monkeypatch):
    from clipadapt.chapters import core
    monkeypatch.setenv("CLIPADAPT_CACHE", str(tmp_path))

    @dataclass(frozen=True)
    class Setup:
        profile: str = "ci"
        seed: int = 0
        size: int = 1
    folders = []

    def compute(s, r):
        r.jobs.put("m", 0, row={"x": 1.0}, model=_trained_model())
        folders.append(r.jobs.folder)
        r.log("x", 1.0)
    core.run("99_demo", compute, Setup())
    assert folders[0].parent == tmp_path / "checkpoints" and not folders[0].exists()
    monkeypatch.setenv("CLIPADAPT_KEEP_CHECKPOINTS", "1")
    core.run("99_demo", compute, Setup(size=2))
    assert folders[1].exists() and JobStore(folders[1]).count() == 1
