"""Failure injection, second part: the cases of the reliability review (../shared/reference/reviews/reliability.md)
that used to end in an unhelpful error from deep inside a library, each under its case id. Every one now names the
problem and what to do next. (The silent cases are in test_failures.py; the download scripts' in test_downloads.py.)"""
import gzip
import json

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from clipadapt import embeddings, sweep
from clipadapt.data import corruptions, registry
from clipadapt.data.microworld import LabelledSet
from clipadapt.embeddings import Encoder, hub_revision, load_encoder
from clipadapt.engine import TrainSpec
from clipadapt.finetune import fit_classifier
from clipadapt.methods import build_method, spt
from clipadapt.methods.peclip import encode_video
from clipadapt.methods.tta import corruption_benchmark
from clipadapt.models import TINY_NAME, load_clip
from clipadapt.models.loader import CheckpointError, ModelError
from clipadapt.models.vit import clip_image_tower
from clipadapt.results import RunRecord, load_record, reproduction_report
from clipadapt.transforms import preprocess_batch
from clipadapt.utils import BrokenFileError, cache_dir

CLASSES = ["circle", "square", "triangle", "star"]


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return load_clip(TINY_NAME)   # random weights: these cases are about inputs, not accuracy


# ---- model loading

@pytest.mark.parametrize("case, tag, hint", [("M2b", "microworld-v2", "Did you mean 'microworld-v1'"),
                                              ("M2c", "openai", "Known tags: microworld-v1")])
def test_M2_a_wrong_tag_of_the_tiny_clip_names_the_tag_it_has(case, tag, hint):
    with pytest.raises(ModelError, match=hint):
        load_clip(TINY_NAME, tag)


def test_M4c_an_existing_file_is_a_checkpoint_whatever_its_suffix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="checkpoint file tiny.ckpt could not be loaded into clipadapt-tiny"):
        load_clip(TINY_NAME, "tiny.ckpt")


def test_M6_random_bytes_and_an_empty_file_are_named_as_broken_checkpoints(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="could not be loaded .* the file is complete"):
        load_clip(TINY_NAME, junk)
    (tmp_path / "empty.pt").touch()
    with pytest.raises(CheckpointError, match="is empty .* download it again"):   # M6b
        load_clip(TINY_NAME, tmp_path / "empty.pt")


def test_M7_weights_of_another_architecture_say_the_model_name_must_match(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"visual.conv1.weight": torch.zeros(8, 3, 4, 4)}, other)
    with pytest.raises(CheckpointError, match="model name must match the architecture"):
        load_clip(TINY_NAME, other)


def test_M12a_an_encoder_missing_offline_gives_the_download_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(OSError, match="HF_HUB_OFFLINE=0 huggingface-cli download bert-base-uncased"):
        load_encoder("bert-base-uncased")


def test_hub_embeddings_are_keyed_by_the_snapshot_commit(tmp_path, monkeypatch):
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "models--org--model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123456789abcdef0123")
    (repo / "snapshots" / "0123456789abcdef0123").mkdir(parents=True)
    (repo / "snapshots" / "0123456789abcdef0123" / "config.json").write_text("{}")
    assert hub_revision("org/model") == "0123456789ab"
    assert hub_revision("org/absent") == "hub"


# ---- data

def test_D2c_a_fractional_severity_is_refused():
    with pytest.raises(ValueError, match="whole number from 1 to 5, got 3.0"):
        corruptions.corrupt(np.zeros((8, 8, 3), np.uint8), "gaussian_noise", 3.0)
    assert corruptions.corrupt(np.zeros((8, 8, 3), np.uint8), "gaussian_noise", np.int64(3)).shape == (8, 8, 3)


_X = np.zeros((2, 8, 8, 3), np.uint8)


@pytest.mark.parametrize("case, images, hint", [
    ("D5a", _X.astype(np.float64), r"floats: if they are in 0-1 use \(x \* 255\)"),
    ("D5b", (_X / 255).astype(np.float32), "floats"),
    ("D5d", _X[..., :1], r"grey: use np.repeat\(x, 3, axis=-1\)"),
    ("D5f", _X.transpose(0, 3, 1, 2), r"channels first: use x.transpose\(0, 2, 3, 1\)"),
    ("D5g", _X.astype(np.int64), r"np.clip\(x, 0, 255\).astype\(np.uint8\)"),
    ("D5h", np.zeros((0, 8, 8, 3), np.uint8), "is empty"),
    ("D5i", _X.astype(np.uint16) * 256, r"16-bit: use \(x >> 8\)"),
    ("RGBA", np.zeros((2, 8, 8, 4), np.uint8), r"RGBA: drop the alpha channel"),
    ("grey, no channel axis", np.zeros((2, 8, 8), np.uint8), "one image or grey images"),
    ("tensor", torch.zeros(2, 8, 8, 3, dtype=torch.uint8), r"for a torch tensor use .numpy\(\)"),
])
def test_D5_images_in_the_wrong_format_say_how_to_convert_them(case, images, hint):
    with pytest.raises((TypeError, ValueError), match=hint):
        preprocess_batch(lambda im: torch.zeros(3, 8, 8), images)


def test_D5_a_list_of_images_of_different_sizes_still_works():
    out = preprocess_batch(lambda im: torch.zeros(3, 4, 4), [np.zeros((8, 8, 3), np.uint8),
                                                              np.zeros((6, 9, 3), np.uint8)])
    assert out.shape == (2, 3, 4, 4)


def test_D7f_a_truncated_fashion_mnist_file_is_named(tmp_path, monkeypatch):
    from clipadapt.data.real import load_fashion_mnist
    for s in ("train", "t10k"):
        for k, d in (("images", 3), ("labels", 1)):
            with gzip.open(tmp_path / f"{s}-{k}-idx{d}-ubyte.gz", "wb") as f:
                f.write(bytes([0, 0, 8, 1]) + (4).to_bytes(4, "big") + bytes(4))
    whole = (tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(whole[:len(whole) // 2])
    monkeypatch.setenv("CLIPADAPT_FASHION_MNIST", str(tmp_path))
    with pytest.raises(BrokenFileError, match=r"t10k-images-idx3-ubyte.gz is damaged .* Reinstall it"):
        load_fashion_mnist("test")


def test_D8g_a_damaged_cifar_c_file_gives_the_prepare_command(tmp_path):
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    np.save(folder / "labels.npy", np.zeros(10, np.int64))
    (folder / "snow.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(BrokenFileError, match=r"(?s)snow.npy cannot be read .*prepare_corruptions.py --dataset cifar10-c"):
        registry.load_cifar_c("cifar10-c", "snow", 5, root=tmp_path)


def test_X22_a_labelled_set_with_fewer_labels_than_images_is_refused():
    with pytest.raises(ValueError, match="10 images but 5 labels"):
        LabelledSet("toy", np.zeros((10, 8, 8, 3), np.uint8), np.zeros(5, np.int64), ("a", "b"))
    with pytest.raises(ValueError, match="labels run from 0 to 3 but there are 2 class names"):
        LabelledSet("toy", np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 3]), ("a", "b"))


# ---- test-time methods

def test_X10c_zero_shot_predicts_a_single_image(clip):
    m = build_method("source", clip.model, clip.tokenizer, CLASSES)
    assert m(torch.randn(1, 3, 48, 48)).shape == (1, len(CLASSES))


@pytest.mark.parametrize("case, images", [("X18", torch.rand(4, 3, 32, 32)),
                                          ("X19", torch.zeros(4, 48, 48, 3, dtype=torch.uint8))])
def test_X18_images_not_preprocessed_for_the_model_say_how_to_preprocess(clip, case, images):
    for name in ("batclip", "tpt"):
        m = build_method(name, clip.model, clip.tokenizer, CLASSES)
        with pytest.raises(ValueError, match=r"takes preprocessed float images n x 3 x 48 x 48, got .*preprocess_batch"):
            m(images)


def test_X20_a_benchmark_spec_without_its_method_is_refused_before_any_stream():
    class Source:   # a stream that must never be drawn
        name, classes = "toy", CLASSES

        def stream(self, *a):
            raise AssertionError("the stream was generated before the spec was checked")
    with pytest.raises(ValueError, match=r"methods\['tent'\] must be a dict with a 'method' key .*tent"):
        corruption_benchmark(None, Source(), {"tent": {"name": "tent"}}, ["fog"])


# ---- fine-tuning and SPT

def _vit_and_data(n_classes=10, top_label=12):
    torch.manual_seed(0)
    vit = clip_image_tower(load_clip(TINY_NAME).model.visual, n_classes)
    x = torch.randn(8, 3, 48, 48)
    return vit, TensorDataset(x, torch.arange(8) % (top_label + 1) + (top_label - 7))


def test_F5c_F11_labels_beyond_the_head_name_the_head_size():
    vit, data = _vit_and_data()
    with pytest.raises(ValueError, match="labels run from 5 to 12, but the model's head gives 10 classes"):
        spt.sensitivity(vit, data, batch_size=8, n_batches=1)                        # F5c
    with pytest.raises(ValueError, match="build the head for 13 classes"):
        fit_classifier(vit, data, data, TrainSpec(epochs=1, batch_size=8))          # F11


@pytest.mark.parametrize("case, change, hint", [
    ("F6", {"epochs": 0}, "epochs 0: train at least one epoch"),
    ("F7c", {"min_lr": -1}, "min_lr -1 and warmup_lr"),
    ("F12", {"eval_every": 0}, "eval_every 0 must be at least 1"),
    ("lr", {"lr": 0.0}, "lr 0.0 must be above 0"),
    ("steps", {"steps": 0}, "steps 0: at least 1"),
    ("F13", {"grad_accum": 0}, "batch_size and grad_accum must be at least 1"),
])
def test_F6_F7c_F12_F13_training_settings_out_of_range_are_named(case, change, hint):
    with pytest.raises(ValueError, match=f"TrainSpec: {hint}"):
        TrainSpec(**change)


def test_F15_an_empty_test_set_is_refused_before_training():
    vit, data = _vit_and_data(top_label=7)
    empty = TensorDataset(torch.zeros(0, 3, 48, 48), torch.zeros(0, dtype=torch.long))
    before = {n: p.clone() for n, p in vit.named_parameters()}
    with pytest.raises(ValueError, match="the test set is empty"):
        fit_classifier(vit, data, empty, TrainSpec(epochs=1, batch_size=8))
    assert all(torch.equal(p, before[n]) for n, p in vit.named_parameters()), "nothing trained"


def test_E5_a_clip_without_frames_is_refused(clip):
    with pytest.raises(ValueError, match="at least one video and one frame, got shape \\(2, 0, 3, 48, 48\\)"):
        encode_video(clip.model, torch.zeros(2, 0, 3, 48, 48))


# ---- records, caches and sweeps

def test_R1b_an_unwritable_results_folder_says_to_set_CLIPADAPT_RESULTS(tmp_path, monkeypatch):
    from clipadapt import results

    def refuse(path, write):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(results, "atomic_write", refuse)
    with pytest.raises(PermissionError, match="Set CLIPADAPT_RESULTS to a writable folder"):
        RunRecord("07_x", "ci", 0).save(tmp_path)


@pytest.mark.parametrize("case, text, what", [("R2", '{"notebook": "05_spt", "metr', "is not valid JSON"),
                                               ("R2c", "", "is empty")])
def test_R2_a_cut_short_record_is_named_with_what_to_do(tmp_path, case, text, what):
    (tmp_path / "05_spt.ci.seed0.json").write_text(text)
    with pytest.raises(BrokenFileError, match=f"05_spt.ci.seed0.json {what}.*run its notebook again"):
        reproduction_report(tmp_path, "ci")
    with pytest.raises(BrokenFileError, match="Run notebooks/05_spt.ipynb again"):   # R2b
        load_record("05_spt", "ci", tmp_path)


@pytest.mark.parametrize("case, damage", [
    ("K4a", lambda p: p.write_bytes(p.read_bytes()[:-40])),
    ("K4b", lambda p: p.write_bytes(b"")),
    ("K4e", lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)),
])
def test_K4_damaged_cached_embeddings_name_the_file_and_say_delete_it(tmp_path, monkeypatch, case, damage):
    monkeypatch.setenv("CLIPADAPT_CACHE", str(tmp_path))
    enc = Encoder("toy", "text", "v1", 4, lambda items: np.ones((len(items), 4), np.float32))
    texts = [f"item {i}" for i in range(10)]
    embeddings.cached(enc, texts, show_progress=False)
    path = embeddings.cache_path(enc, texts)
    damage(path)
    with pytest.raises(BrokenFileError, match=r"\.npy cannot be read as a NumPy array .* Delete the file"):
        embeddings.cached(enc, texts, show_progress=False)


def test_K6_a_cache_setting_that_is_a_file_says_it_must_be_a_folder(tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("")
    monkeypatch.setenv("CLIPADAPT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(NotADirectoryError, match="is a file; set CLIPADAPT_CACHE to a folder"):
        cache_dir()


@pytest.mark.parametrize("case, text, hint", [
    ("Q3", "runs:\n  - notebook: toy\n    seeds: [0, 1\n", "is not valid YAML at line"),
    ("Q3b", "runs:\n\t- notebook: toy\n", "indent with spaces, not tabs"),
    ("Q8", "- notebook: toy\n", "a sweep file is a mapping with `runs:`.*holds list"),
    ("Q9", "", "holds NoneType"),
])
def test_Q3_Q8_Q9_a_sweep_file_that_is_not_a_sweep_is_named(tmp_path, case, text, hint):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"sweep.yaml.*{hint}" if case != "Q9" else hint):
        sweep.expand(path)


@pytest.mark.parametrize("case, record, hint", [("Q14", '{"metrics": {"y": 1', "is not valid JSON.*Delete"),
                                                ("Q15", '{"notebook": "toy"}', "is not a run record")])
def test_Q14_Q15_gather_names_a_broken_result_of_a_finished_run(tmp_path, case, record, hint):
    run = sweep.Run(0, tmp_path / "toy.ipynb", {"seed": 0}, tmp_path / "toy_seed=0")
    (run.folder / "results").mkdir(parents=True)
    (run.folder / "done.json").write_text(json.dumps({"params": run.params}))
    (run.folder / "results" / "toy.ci.seed0.json").write_text(record)
    with pytest.raises(ValueError, match=hint):
        sweep.gather([run])

