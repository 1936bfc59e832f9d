"""Sweeps: a sweep file expands to the expected papermill runs, runs them, resumes, prints scheduler commands."""
import json
import re

import nbformat
import pytest

from clipadapt import sweep

SWEEP = """
profile: ci
out: runs
notebooks: nb
runs:
  - notebook: toy
    seeds: [0, 1]
    grid:
      x: [1, 2]
      names: [[a, b]]
    params: {scale: 10}
  - notebook: toy
    seeds: [5]
"""


@pytest.fixture
def sweep_file(tmp_path):
    """A toy chapter: papermill parameters, a results record, a log of its executions, and a switch to fail."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"}})
    nb.cells = [
        nbformat.v4.new_code_cell('profile = "ci"\nseed = 0\nx = 0\nscale = 1\nnames = []', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import os, pathlib\n"
            "from clipadapt.results import RunRecord\n"
            f"with open({str(tmp_path / 'executions.log')!r}, 'a') as f:\n"
            "    f.write(f'{x} {seed}\\n')\n"
            f"if x == 2 and pathlib.Path({str(tmp_path / 'fail')!r}).exists():\n"
            "    raise RuntimeError('interrupted')\n"
            "rec = RunRecord('toy', profile, seed)\n"
            "rec.log('y', scale * x + seed)\n"
            "rec.save()"),
    ]
    (tmp_path / "nb").mkdir()
    nbformat.write(nb, tmp_path / "nb" / "toy.ipynb")
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP)
    return path


def test_a_sweep_file_expands_to_every_combination_in_a_stable_order(sweep_file):
    runs = sweep.expand(sweep_file)
    assert [r.index for r in runs] == list(range(5))
    assert [(r.params["x"], r.params["seed"]) for r in runs[:4]] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert runs[0].params == {"profile": "ci", "seed": 0, "scale": 10, "x": 1, "names": ["a", "b"]}
    assert runs[4].params == {"profile": "ci", "seed": 5}
    assert runs[0].name == 'toy_x=1_names=a-b_seed=0' and runs[4].name == "toy_seed=5"
    assert len({r.folder for r in runs}) == 5 and all(r.folder.parent == sweep_file.parent / "runs" for r in runs)
    assert sweep.expand(sweep_file) == runs


def test_bad_sweep_files_say_what_is_wrong(sweep_file):
    sweep_file.write_text(SWEEP.replace("notebook: toy\n    seeds: [5]", "notebook: toys\n    seeds: [5]"))
    with pytest.raises(ValueError, match=r"unknown notebook 'toys'; choose one of \['toy'\]"):
        sweep.expand(sweep_file)
    sweep_file.write_text(SWEEP.replace("profile: ci", "profile: gpu"))
    with pytest.raises(ValueError, match="unknown profile"):
        sweep.expand(sweep_file)
    sweep_file.write_text(SWEEP + "  - notebook: toy\n    seeds: [5]\n")
    with pytest.raises(ValueError, match="the same run"):
        sweep.expand(sweep_file)


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_without_redoing_finished_runs(sweep_file, tmp_path):
    runs = sweep.expand(sweep_file)
    (tmp_path / "fail").touch()                                     # the x=2 runs die this time
    failed = sweep.run_all(runs, gpus=[], workers=2)
    assert sorted(r.index for r in failed) == [2, 3]
    assert [r.done for r in runs] == [True, True, False, False, True]
    assert "interrupted" in (runs[2].folder / "error.txt").read_text()
    todo = sweep.commands(sweep_file, runs)
    assert len(todo) == 2 and todo[0].endswith(f"run-one {sweep_file.resolve()} --index 2") and todo[1].endswith("3")
    (tmp_path / "fail").unlink()
    assert sweep.run_all(runs, gpus=[], workers=2) == []
    executions = (tmp_path / "executions.log").read_text().split("\n")[:-1]
    assert sorted(executions) == sorted(["1 0", "1 1", "2 0", "2 1", "0 5", "2 0", "2 1"]), "only x=2 ran twice"
    table = sweep.gather(runs)
    assert sorted(table["value"]) == sorted([10 * 1 + 0, 10 * 1 + 1, 10 * 2 + 0, 10 * 2 + 1, 0 + 5])
    assert set(table["run"]) == {r.name for r in runs} and set(table["metric"]) == {"y"}
    assert json.loads((runs[0].folder / "done.json").read_text())["params"]["x"] == 1
    assert sweep.run_all(runs, gpus=[], workers=2) == [] and len(
        (tmp_path / "executions.log").read_text().split("\n")[:-1]) == 7, "a finished sweep runs nothing again"


def test_slurm_array_and_run_one_cover_every_run(sweep_file, capsys):
    runs = sweep.expand(sweep_file)
    script = sweep.slurm_script(sweep_file, runs, time_limit="2:00:00", partition="gpu")
    assert "#SBATCH --array=0-4" in script and "#SBATCH --partition=gpu" in script
    assert f"-m clipadapt.sweep run-one {sweep_file.resolve()} --index $SLURM_ARRAY_TASK_ID" in script
    with pytest.raises(SystemExit, match="--index must be between 0 and 4"):
        sweep.main(["run-one", str(sweep_file), "--index", "5"])
    sweep.main(["list", str(sweep_file)])
    assert capsys.readouterr().out.count("todo") == 5


def test_the_shipped_paper_sweep_names_real_notebooks_and_parameters():
    from clipadapt import book
    runs = sweep.expand(book.ROOT / "notebooks" / "sweeps" / "paper.yaml")
    assert {r.notebook.stem for r in runs} == {nb.stem for nb in book.notebooks() if not nb.stem.startswith("9")}
    for r in runs:
        nb = nbformat.read(r.notebook, as_version=4)
        params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", [])).source
        declared = set(re.findall(r"^(\w+)\s*=", params, re.M)) | {
            n for line in re.findall(r"^([\w, ]+)=", params, re.M) for n in re.findall(r"\w+", line)}
        assert set(r.params) <= declared, f"{r.name}: {set(r.params) - declared} are not parameters of {r.notebook.name}"
        assert r.params["profile"] == "paper"
