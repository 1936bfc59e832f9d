import json

import torch
from torch import nn

from clipadapt.bench import count_parameters, time_per_step
from clipadapt.eval import accuracy, confusion_matrix
from clipadapt.results import RunRecord, load_record


def test_count_parameters_respects_freezing_and_sharing():
    m = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    m[0].requires_grad_(False)
    c = count_parameters(m)
    assert (c.trainable, c.total) == (3 * 2 + 2, 4 * 3 + 3 + 3 * 2 + 2)
    shared = nn.Linear(2, 2)
    assert count_parameters(nn.Sequential(shared, shared)).total == 6


def test_time_per_step_reports_positive_numbers():
    x = torch.randn(64, 64)
    r = time_per_step(lambda: x @ x, warmup=1, repeats=3)
    assert r["s_per_step"] > 0 and r["peak_mb"] > 0


def test_results_record_round_trip(tmp_path):
    r = RunRecord("99_test", "ci", seed=3)
    r.log("acc_top1", 12.5)
    r.tables["t"] = [{"a": 1}]
    p = r.save(tmp_path)
    assert p.name == "99_test.ci.json"
    d = load_record("99_test", "ci", tmp_path)
    assert d["metrics"] == {"acc_top1": 12.5} and d["seed"] == 3 and "torch" in d["versions"]
    assert json.loads(p.read_text())["wall_time_s"] >= 0


def test_metrics():
    assert accuracy([1, 2, 3, 3], [1, 2, 3, 0]) == 75.0
    cm = confusion_matrix([0, 1, 1], [0, 1, 0], 2)
    assert cm.tolist() == [[0.5, 0.5], [0.0, 1.0]]


def test_glue_passes_plain_python_numbers():
    import numpy as np

    from clipadapt.results import glue
    v = glue("x", np.float64(1.5))
    assert type(v) is float and v == 1.5
    assert type(glue("y", torch.tensor(2.0))) is float
