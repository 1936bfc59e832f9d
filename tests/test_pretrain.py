import json

import numpy as np
import pytest
import torch

from clipadapt.models.pretrain import PretrainConfig, pretrain_tiny_clip

SMALL = PretrainConfig(seed=1, n_shapes=96, n_faces=64, n_fashion=0, batch_size=32, epochs=1, warmup_steps=2,
                       eval_every=1000, eval_size=16)


def test_pretraining_is_deterministic_under_a_seed():
    a = pretrain_tiny_clip(SMALL, show_progress=False)
    b = pretrain_tiny_clip(SMALL, show_progress=False)
    assert a["loss"] == b["loss"]
    sa, sb = a["model"].state_dict(), b["model"].state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_pretraining_loss_falls_and_checkpoint_is_written(tmp_path):
    cfg = PretrainConfig(seed=2, n_shapes=0, n_faces=0, n_fashion=1024, batch_size=32, epochs=2, warmup_steps=5,
                         lr=1e-3, eval_every=1000, eval_size=16)
    out = tmp_path / "tiny.pt"
    h = pretrain_tiny_clip(cfg, out, show_progress=False)
    loss = np.array(h["loss"])
    assert loss[-8:].mean() < loss[:8].mean() - 0.3
    assert out.exists() and json.loads(out.with_suffix(".history.json").read_text())["n_pairs"] == 1024


def test_heldout_seed_is_refused():
    with pytest.raises(ValueError, match="pretraining seeds"):
        pretrain_tiny_clip(PretrainConfig(seed=10_000, n_shapes=8, n_faces=8, n_fashion=0), show_progress=False)

