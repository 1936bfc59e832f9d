"""Golden records: every chapter's ci numbers match tests/golden within the stated tolerance, and the comparison
reports what moved (a number, a claim's outcome, a metric that appeared or went)."""
import copy
import json

import pytest
import torch

from clipadapt import chapters
from clipadapt.chapters import golden
from clipadapt.chapters.core import Result
from clipadapt.results import RunRecord


def _result(**metrics):
    r = Result(RunRecord("99_demo", "ci", 0), None)
    for k, v in {"acc[a]": 70.0, "acc[b]": 60.0, "auc_mean": 0.70, "train_minutes": 3.0, **metrics}.items():
        r.log(k, v)
    r.claim("a_beats_b", "a beats b", "a が b を上回る", [10.0, 9.0])
    return r


def test_a_run_matches_its_own_record_and_machine_metrics_are_not_kept(tmp_path):
    path = golden.write(_result(), tmp_path)
    assert path.name == "99_demo.ci.json"
    assert golden.differences(_result(), tmp_path) == []
    assert "train_minutes" not in golden.record_of(_result())["metrics"]
    assert golden.differences(_result(train_minutes=30.0), tmp_path) == []


def test_moves_beyond_the_tolerance_are_named_with_their_size(tmp_path):
    golden.write(_result(), tmp_path)
    assert golden.differences(_result(**{"acc[a]": 70.9, "auc_mean": 0.715}), tmp_path) == []   # within 1 / 0.02
    diff = golden.differences(_result(**{"acc[a]": 73.0, "auc_mean": 0.73}), tmp_path)
    assert diff == ["metric 'acc[a]': 73, golden 70 (moved +3)", "metric 'auc_mean': 0.73, golden 0.7 (moved +0.03)"]
    new = _result(**{"acc[c]": 1.0})
    new.claim("a_beats_b", "a beats b", "a が b を上回る", [10.0, -1.0])
    assert golden.differences(new, tmp_path) == ["metric 'acc[c]' is new (not in the golden record)",
                                                 "claim 'a_beats_b': some, golden every"]
    gone = copy.deepcopy(_result())
    del gone.record.metrics["acc[b]"]
    gone.record.info["claims"] = []
    assert golden.differences(gone, tmp_path) == ["metric 'acc[b]' is gone (in the golden record)",
                                                  "claim 'a_beats_b' is gone"]


def test_a_missing_record_says_how_to_write_it(tmp_path):
    assert golden.differences(_result(), tmp_path) == [
        f"no golden record at {tmp_path / '99_demo.ci.json'}: write it with `clipadapt golden --write`"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(chapters.CHAPTERS))
def test_chapter_numbers_match_their_golden_record(ci_chapters, name):
    ch = chapters.get(name)
    diff = golden.differences(ch.run(ch.setup("ci")))
    assert not diff, (f"{name} moved from tests/golden (if the change is meant, run `clipadapt golden --write "
                      f"{name}` and say what moved in the commit):\n  " + "\n  ".join(diff))


def test_a_rewritten_record_keeps_the_tolerance_its_chapter_states(tmp_path):
    path = golden.write(_result(), tmp_path)
    record = json.loads(path.read_text())
    record["tolerance"] = {**record["tolerance"], "abs": 3.0, "why": "chaotic training"}
    path.write_text(json.dumps(record))
    assert golden.differences(_result(**{"acc[a]": 72.0}), tmp_path) == []   # within the stated 3 points
    golden.write(_result(**{"acc[a]": 72.0}), tmp_path)
    assert json.loads(path.read_text())["tolerance"]["abs"] == 3.0


def test_a_seed_near_the_claims_line_may_cross_it_within_the_tolerance(tmp_path):
    near = _result()
    near.claim("a_beats_b", "a beats b", "a が b を上回る", [10.0, 0.4])
    golden.write(near, tmp_path)
    crossed = _result()
    crossed.claim("a_beats_b", "a beats b", "a が b を上回る", [10.0, -0.3])
    assert golden.differences(crossed, tmp_path) == []
    crossed.claim("a_beats_b", "a beats b", "a が b を上回る", [10.0, -1.0])
    assert golden.differences(crossed, tmp_path) == ["claim 'a_beats_b': per seed [10.0, -1.0], golden [10.0, 0.4]"]


def test_records_keep_the_tiny_models_digest_and_a_change_is_named_when_numbers_moved(tmp_path, monkeypatch):
    monkeypatch.setattr(golden, "assets", lambda: {"tiny-clip": "a" * 64, "tiny-vl-bart": "b" * 64})
    path = golden.write(_result(), tmp_path)
    assert json.loads(path.read_text())["assets"] == {"tiny-clip": "a" * 64, "tiny-vl-bart": "b" * 64}
    assert golden.differences(_result(), tmp_path) == []
    monkeypatch.setattr(golden, "assets", lambda: {"tiny-clip": "c" * 64, "tiny-vl-bart": "b" * 64})
    assert golden.differences(_result(), tmp_path) == []   # other models, the same numbers: nothing to report
    diff = golden.differences(_result(**{"acc[a]": 75.0}), tmp_path)
    assert diff[0].startswith("the tiny models differ from those the record was written with (tiny-clip cccccccccccc "
                              "here, aaaaaaaaaaaa in the record)") and "golden --write" in diff[0]
    assert diff[1:] == ["metric 'acc[a]': 75, golden 70 (moved +5)"]


def test_the_models_digest_reads_tensors_not_file_bytes(tmp_path):
    state = {"w": torch.arange(6.0).view(2, 3), "b": torch.zeros(2, dtype=torch.bfloat16)}
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, items in ((one, state), (two, dict(reversed(state.items())))):   # other bytes, the same tensors
        folder.mkdir()
        torch.save(items, folder / "m.pt")
        (folder / "c.json").write_text("{}")
    assert (one / "m.pt").read_bytes() != (two / "m.pt").read_bytes()
    both = golden.content_digest([one / "m.pt", one / "c.json"], one)
    assert both == golden.content_digest([two / "m.pt", two / "c.json"], two)
    assert golden.content_digest([one / "m.pt"]) != both   # which files are in it counts
    torch.save({**state, "w": state["w"] + 1e-6}, two / "m.pt")
    assert golden.content_digest([two / "m.pt", two / "c.json"], two) != both
