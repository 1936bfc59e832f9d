"""The training loops through accelerate. fit_classifier: two processes (DDP on the CPU, gloo) give the metrics of
one, and gradient accumulation gives the updates of the larger batch; tolerance 1e-5 on losses and weights (float
sums in another order), accuracies equal. train_vl's loss is a mean over the tokens of a batch, so two processes
(each a mean over its own tokens) differ from one a little; there the test asserts that it trains."""
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_fit_script.py")
TOL = 1e-5


def _launch(*args: str, out: Path) -> dict:
    launcher = Path(sys.executable).with_name("accelerate")
    return _run([str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                 "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                 str(SCRIPT), *args, str(out)], out)


def _run(cmd: list[str], out: Path) -> dict:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(out.read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _close(a: dict, b: dict) -> None:
    assert a["best"] == b["best"] and a["last"] == b["last"]
    assert [h["loss"] for h in a["history"]] == pytest.approx([h["loss"] for h in b["history"]], abs=TOL)
    assert a["weights"] == pytest.approx(b["weights"], abs=TOL)


@pytest.mark.slow
def test_two_processes_give_the_metrics_of_one_process(tmp_path):
    one = _run([sys.executable, str(SCRIPT), "fit", str(tmp_path / "one.json")], tmp_path / "one.json")
    two = _launch("fit", out=tmp_path / "two.json")
    assert (one["processes"], two["processes"]) == (1, 2)
    _close(one, two)
    assert one["history"][-1]["loss"] < one["history"][0]["loss"] - 0.1, "the toy problem should be learnt"


@pytest.mark.slow
def test_gradient_accumulation_matches_the_larger_batch(tmp_path):
    big = _run([sys.executable, str(SCRIPT), "fit", str(tmp_path / "a.json"), "32", "1"], tmp_path / "a.json")
    acc = _run([sys.executable, str(SCRIPT), "fit", str(tmp_path / "b.json"), "16", "2"], tmp_path / "b.json")
    small = _run([sys.executable, str(SCRIPT), "fit", str(tmp_path / "c.json"), "16", "1"], tmp_path / "c.json")
    _close(big, acc)
    assert small["weights"] != pytest.approx(big["weights"], abs=1e-2), "batch 16 without accumulation differs"


@pytest.mark.slow
def test_vl_pet_training_runs_in_two_processes_and_learns(tmp_path):
    two = _launch("vl", out=tmp_path / "vl.json")
    losses, k = two["losses"], len(two["losses"]) // 3
    assert two["processes"] == 2 and sum(losses[-k:]) / k < 0.8 * sum(losses[:k]) / k   # as the one-process test
