import time

import numpy as np
import pytest
import torch

from clipadapt.models import (TINY_NAME, TINY_TAG, ModelError, OfflineWeightsError, load_backbone, load_clip,
                              preprocess_batch)
from clipadapt.profiles import activate, get_profile


def test_unknown_model_lists_close_names():
    with pytest.raises(ModelError, match="Did you mean: ViT-B-16"):
        load_clip("ViT-B-61")


def test_unknown_tag_lists_known_tags():
    with pytest.raises(ModelError, match="Known tags: .*openai"):
        load_clip("ViT-B-16", "not-a-tag")


def test_offline_tag_fails_at_once_and_says_how_to_predownload(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(OfflineWeightsError, match="data_scripts/download_weights.py --model RN50 --pretrained openai"):
        load_clip("RN50", "openai", cache=tmp_path)
    assert time.time() - t0 < 30  # no minute of retries against an unreachable hub


def test_missing_tiny_checkpoint_names_the_build_command(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPADAPT_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="python data_scripts/build_ci_assets.py"):
        load_clip(TINY_NAME, TINY_TAG)


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_clip(TINY_NAME, str(tmp_path / "nope.pt"))


def test_checkpoint_round_trip_through_the_same_loader(tmp_path):
    torch.manual_seed(0)
    a = load_clip(TINY_NAME)  # random init
    path = tmp_path / "w.pt"
    torch.save(a.model.state_dict(), path)
    b = load_clip(TINY_NAME, str(path))
    x = preprocess_batch(b.preprocess, np.random.default_rng(0).integers(0, 255, (3, 48, 48, 3), dtype=np.uint8))
    t = b.tokenizer(["a photo of a star."])
    with torch.no_grad():
        assert torch.allclose(a.model.encode_image(x), b.model.encode_image(x))
        assert torch.allclose(a.model.encode_text(t), b.model.encode_text(t))
    assert b.image_size == 48


def test_profiles():
    assert get_profile("ci").offline and get_profile("paper").name == "paper"
    with pytest.raises(ValueError, match="unknown profile 'gpu': use one of ci, paper"):
        get_profile("gpu")
    with pytest.raises(ValueError, match="unknown profile"):
        load_backbone("colab")
    activate("ci")
    import os
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_tiny_backbone_loads_for_ci(tiny):
    b = load_backbone("ci")
    assert b.name == TINY_NAME and b.image_size == 48
    n = sum(p.numel() for p in b.model.parameters())
    assert 5e6 < n < 12e6
