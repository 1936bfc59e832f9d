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
    assert p.name == "99_test.ci.seed3.json"
    d = load_record("99_test", "ci", tmp_path, seed=3)
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


def test_reproduction_rows_get_the_status_their_numbers_give_and_the_report_gathers_them(tmp_path):
    from clipadapt.results import STATUSES, RunRecord, reproduction_report
    rec = RunRecord("01_x", "ci", 0)
    rows = [rec.reproduce("a (%)", 76.93, "Table 2", 76.5),              # within 1 point
            rec.reproduce("b (%)", 76.93, "Table 2", 74.0),              # outside
            rec.reproduce("c (%)", 76.93, "Table 2", float("nan")),      # not measured
            rec.reproduce("d (%)", 62.82, "README", None, licence=True),
            rec.reproduce("e", "up to +20%", "summary", 3.0),
            rec.reproduce("f (%)", 4.16, "Table 2", 4.25, tolerance=0.05),
            rec.reproduce("g: trainable share (%)", 4.16, "Table 2", 4.18, tolerance=0.05, count=True),
            rec.reproduce("h: trainable share (%)", 4.16, "Table 2", 4.25, tolerance=0.05, count=True)]
    assert [r["status"] for r in rows] == [STATUSES[0], STATUSES[1], STATUSES[2], STATUSES[3], STATUSES[4], STATUSES[1],
                                           "count matches the architecture", "count differs"]
    assert rows[2]["ours"] is None and rows[4]["tolerance"] is None
    rec.save(tmp_path)
    RunRecord("00_y", "ci", 0).save(tmp_path)          # no reproduction table: not in the report
    RunRecord("01_x", "paper", 0).save(tmp_path)       # another profile: not in the report
    got, env = reproduction_report(tmp_path, "ci")
    assert [r["quantity"] for r in got] == ["a (%)", "b (%)", "c (%)", "d (%)", "e", "f (%)", "g: trainable share (%)",
                                          "h: trainable share (%)"]
    assert [e["notebook"] for e in env] == ["01_x"] and {"machine", "accelerator", "torch"} <= set(env[0])


def test_every_seed_comes_from_one_seed_sequence():
    from clipadapt.utils import spawn_seeds
    runs = spawn_seeds(0, 3)
    assert runs == spawn_seeds(0, 3) and len(set(runs)) == 3
    assert spawn_seeds(0, 2) == runs[:2]          # more seeds keep the earlier runs' seeds
    assert spawn_seeds(1, 3) != runs
    train, test = spawn_seeds(0, 1, "train split"), spawn_seeds(0, 1, "test split")
    assert train != test and not (set(train) | set(test)) & set(runs)   # named streams are apart from the runs
