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


def _launch(mode: str, *rest: str, out: Path) -> dict:
    launcher = Path(sys.executable).with_name("accelerate")
    return _run([str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                 "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                 str(SCRIPT), mode, str(out), *rest], out)


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


@pytest.mark.slow
def test_corruption_streams_are_dealt_to_processes_and_give_the_table_of_one(tmp_path):
    # test-time adaptation stays online per stream: two processes each run whole streams, the table is identical
    import numpy as np
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for c in ("fog", "snow", "frost"):
        np.save(folder / f"{c}.npy", rng.integers(0, 255, (5 * 8, 32, 32, 3), dtype=np.uint8))
    np.save(folder / "labels.npy", np.tile(np.arange(8) % 10, 5).astype(np.uint8))
    one = _run([sys.executable, str(SCRIPT), "tta", str(tmp_path / "one.json"), str(tmp_path)], tmp_path / "one.json")
    two = _launch("tta", str(tmp_path), out=tmp_path / "two.json")
    assert len(one["table"]) == 3 * 2 * 3 and one["table"] == two["table"]
    assert sorted(one["loads"]) == [0] * 18
    assert sorted(two["loads"]) == [0] * 9 + [1] * 9, "each process runs its share of the 6 streams x 3 methods"


def test_loops_with_other_precisions_run_one_after_the_other_in_one_process():
    # a notebook kernel calls several loops; accelerate's per-process state must not pin the first one's settings
    import numpy as np

    from clipadapt.methods.contrastive_da import HeadConfig, train_head
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    x = rng.normal(size=(200, 12)) + 2.0 * np.eye(3)[y] @ rng.normal(size=(3, 12))
    fp32, bf16, again = (train_head(x, y, HeadConfig(epochs=4, batch_size=64, precision=mp))[1]
                         for mp in ("fp32", "bf16", "fp32"))
    def losses(h):
        return [r["train_loss"] for r in h]
    # float sums may differ in the last digits between runs (threads); bf16 changes the fourth digit
    assert losses(again) == pytest.approx(losses(fp32), rel=1e-6), "the same settings after a bf16 run"
    assert losses(bf16)[-1] < losses(bf16)[0]
    assert losses(bf16) != pytest.approx(losses(fp32), rel=1e-5), "bf16 autocast really ran"
