"""The book: bilingual parity, notebook interface, every notebook run by papermill on ci, and the HTML build."""
import json
import re

import nbformat
import pytest

from clipadapt import book
from clipadapt.results import load_record

GOOD = """# Title / 題名

::::{tab-set}
:sync-group: lang

:::{tab-item} English
:sync: en

Some text.
:::

:::{tab-item} 日本語
:sync: ja

本文です。
:::
::::
"""


def test_every_page_and_section_has_both_languages():
    assert book.check_parity() == []


def test_parity_check_catches_one_language():
    assert book.parity_errors("x", GOOD) == []
    assert any("heading without both languages" in e for e in book.parity_errors("x", GOOD.replace(" / 題名", "")))
    no_ja = GOOD.replace(":::{tab-item} 日本語\n:sync: ja\n\n本文です。\n:::\n", "")
    assert any("exactly one 'en' and one 'ja'" in e for e in book.parity_errors("x", no_ja))
    english_in_ja = GOOD.replace("本文です。", "Just English.")
    assert any("no Japanese text" in e for e in book.parity_errors("x", english_in_ja))
    assert any("prose outside" in e for e in book.parity_errors("x", GOOD + "\nA stray paragraph.\n"))


def test_notebooks_take_profile_and_seed_as_papermill_parameters():
    nbs = book.notebooks()
    assert nbs, "no notebooks found"
    for path in nbs:
        nb = nbformat.read(path, as_version=4)
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, path
        assert re.search(r'^profile = "ci"$', params[0].source, re.M), path
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path} has committed outputs"


def test_every_notebook_has_the_colab_button_and_install_cell_at_the_release_tag():
    import tomllib
    url, tag = book.release()
    assert tag == "v" + tomllib.loads((book.ROOT / "pyproject.toml").read_text())["project"]["version"]
    for path in book.notebooks():
        nb = nbformat.read(path, as_version=4)
        button, install = book.colab_cells(path)
        hint = f"{path.name}: run `python -m clipadapt.book colab`"
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), path
        assert nb.cells[1].source == button, hint
        assert next(c for c in nb.cells if c.cell_type == "code").source == install, hint
        assert f"/blob/{tag}/notebooks/{path.name}" in button and f'"--branch", "{tag}"' in install and url in install
        params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", [])).source
        assert 'profile = "paper"' in params and "GPU" in params, f"{path.name}: say how to switch to paper"
        if path.stem != "00_backbone" and not path.stem.startswith("9"):
            assert "data_scripts/prepare_" in params, f"{path.name}: name the data command of the paper profile"


def test_notebooks_are_thin():
    """A notebook sets parameters, calls its chapter's runner and draws: at most 80 lines of code each (blank and
    comment lines, the parameters and the install cell aside), 600 in all, 25 in a cell, and no branch on the
    profile (what differs per profile is the chapter's set-up, in clipadapt.chapters)."""
    total = 0
    for path in book.notebooks():
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"
                and not {"parameters", "colab-install"} & set(c.metadata.get("tags", []))]
        lines = [[x for x in c.source.splitlines() if x.strip() and not x.strip().startswith("#")] for c in code]
        assert max(map(len, lines)) <= 25, (path.name, max(map(len, lines)))
        assert sum(map(len, lines)) <= 80, (path.name, sum(map(len, lines)))
        assert not any(re.search(r"\b(if|elif)\b.*\bprof", x) for cell in lines for x in cell), path.name
        total += sum(map(len, lines))
    assert total <= 600, total


def test_release_tag_must_match_the_package_version(tmp_path):
    (tmp_path / "_config.yml").write_text("repository:\n  url: https://github.com/o/r\n  branch: main\n")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "clipadapt"\nversion = "0.2.0"\n')
    with pytest.raises(ValueError, match="set the branch to 'v0.2.0'"):
        book.release(tmp_path)
    (tmp_path / "_config.yml").write_text("repository:\n  url: https://github.com/o/r\n  branch: v0.2.0\n")
    assert book.release(tmp_path) == ("https://github.com/o/r", "v0.2.0")


def test_every_chapter_has_a_teaching_page_in_the_toc():
    import yaml
    toc = (book.ROOT / "_toc.yml").read_text()
    for nb in book.notebooks():
        if nb.stem.startswith(("00", "9")):
            continue
        page = book.ROOT / "book" / "teaching" / f"{nb.stem}.md"
        assert page.exists() and f"file: book/teaching/{nb.stem}" in toc, f"no teaching page for {nb.stem}"
        text = page.read_text()
        for heading in ("Learning goals", "Session plan", "Exercises", "Discussion"):
            assert re.search(rf"^## {heading}.* / ", text, re.M), f"{page.name}: no '{heading}' section"
        assert f"../../notebooks/{nb.stem}" in text, f"{page.name}: no link to its chapter"
        solutions_en, solutions_ja = text.count("{dropdown} Solution"), text.count("{dropdown} 解答")
        assert solutions_en == solutions_ja >= 3, f"{page.name}: {solutions_en} / {solutions_ja} hidden solutions"
    assert yaml.safe_load(toc)


def test_unknown_profile_fails_before_running(tmp_path):
    with pytest.raises(ValueError, match="unknown profile"):
        book.run_notebook(book.notebooks()[0], profile="gpu", out_dir=tmp_path)


@pytest.mark.slow
def test_book_builds_with_glued_numbers_from_the_run(built_book):
    html = (built_book / "notebooks" / "00_backbone.html").read_text()
    rec = load_record("00_backbone", "ci", book.ROOT / "results")
    for key in ("zero_shot_fashion_top1", "zero_shot_shapes_top1"):
        assert f"{rec['metrics'][key]:.1f}" in html, key
    assert "マイクロワールド" in html and "micro-world" in html
    assert html.count("<img") >= 6  # sample grids, curves, confusion matrices, AU chart
    assert (built_book / "index.html").exists() and (built_book / "book" / "glossary.html").exists()
    # the published folder states its edition on the front page and is ready for a static host
    info = json.loads((book.SITE / "build_info.json").read_text())
    intro = (built_book / "book" / "intro.html").read_text()
    assert info["profile"] == "ci" and info["date"][:10] in intro and info["commit"] in intro
    assert f"torch {info['versions']['torch']}" in intro and (built_book / ".nojekyll").exists()


@pytest.mark.slow
def test_backbone_notebook_meets_targets_on_ci(built_book):
    rec = load_record("00_backbone", "ci", book.ROOT / "results")
    assert rec["metrics"]["zero_shot_fashion_top1"] >= 80
    assert rec["metrics"]["zero_shot_shapes_top1"] >= 90
    assert rec["profile"] == "ci" and rec["wall_time_s"] > 0
    assert json.loads((book.ROOT / "results" / "00_backbone.ci.seed0.json").read_text())["notebook"] == "00_backbone"


@pytest.mark.slow
def test_every_notebook_ran_without_errors(built_book):
    for nb in book.notebooks():
        out = nbformat.read(book.SITE / "notebooks" / nb.name, as_version=4)
        errors = [o for c in out.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.output_type == "error"]
        assert not errors, nb.name
        html = (built_book / "notebooks" / f"{nb.stem}.html").read_text()
        for bad in ("None", "nan"):   # a glued value that was never computed
            assert f'<span class="pasted-text">{bad}</span>' not in html, (nb.name, bad)


def chapter_result(name: str):
    """The chapter's run on ci, through its runner (computed once per set-up and code: the notebook of the book's
    build and these tests read the same run)."""
    from clipadapt import chapters
    ch = chapters.get(name)
    return ch.run(ch.setup("ci"))


@pytest.mark.slow
def test_costs_page_memory_targets_on_the_paper_architectures(ci_chapters):
    """On ViT-B/16 at batch 64 in fp32: SPT-LoRA's and SPT-Adapter's steps hold at most 0.8 of full fine-tuning's
    memory, and with activation checkpointing every PEFT step with a full fine-tuning row at most 0.35 of it."""
    t = chapter_result("costs").texts
    assert t["pc_spt_mem_ratio"] <= 80 and t["pc_spt_adapter_mem_ratio"] <= 80
    assert t["pc_spt_act_pct"] < 100 and t["pc_spt_adapter_act_pct"] < 100
    assert t["pc_ckpt_max_share"] <= 35


@pytest.mark.slow
def test_batclip_claims_on_ci(ci_chapters):
    """The paper's qualitative claim on ci: bimodal TTA beats zero-shot clearly and is at least vision-only Tent.

    Margins from the spread over three stream orders (seeds 0-2, measured when this test was set): BATCLIP minus
    zero-shot +3.9 +/- 0.3 points, BATCLIP minus Tent +4.6 +/- 0.4. The test asks for +2 over zero-shot on every
    seed (about 6 standard deviations below the mean gain) and no loss against Tent on any seed."""
    r = chapter_result("batclip")
    m, claims = r.metrics, r.claims
    assert m["mean_acc_batclip"] >= m["mean_acc_zero_shot"] + 2.0, m
    assert len(claims["bat_gain"].per_seed) == 3 and min(claims["bat_gain"].per_seed) >= 2.0, claims
    assert m["mean_acc_batclip"] >= m["mean_acc_tent"], m
    assert min(claims["bat_gain_tent"].per_seed) >= 0.0, claims
    worst = m["worst_gain_batclip"]   # the prose's verdict on the weakest corruption follows its glued number
    assert r.texts["bat_worst_verdict_en"] == ("so adaptation can also cost accuracy" if worst < 0
                                               else "so every corruption gained"), (worst, r.texts)


@pytest.mark.slow
def test_batclip_page_shows_the_run(built_book):
    m = load_record("04_batclip", "ci", book.ROOT / "results")["metrics"]
    assert m == chapter_result("batclip").metrics   # the page's record is the runner's run
    html = (built_book / "notebooks" / "04_batclip.html").read_text()
    for key in ("mean_acc_batclip", "mean_acc_zero_shot", "mean_acc_tpt_subset"):
        assert f"{m[key]:.1f}" in html, key
    assert "すべてのシードで成り立ちました" in html or "一部のシードでだけ成り立ちました" in html
    # the paper's main table (per corruption) and ours next to its means: "not run" on ci
    assert "not run" in html and "73.85" in html and "61.13" in html and "sarthaxxxxx.github.io/BATCLIP" in html


@pytest.mark.slow
def test_spt_claims_on_ci(ci_chapters):
    """SPT's claim on the ci suite (6 tasks, 3 seeds): sensitivity picks better weights than a random choice at the
    same budget, is not worse than a largest-magnitude choice, and SPT-LoRA is at least as good as LoRA at a similar
    count (a tie within the spread).

    Margins from two runs with different random heads (VTAB-mean differences over seeds 0-2): SPT minus random, per
    seed never below +1.4 (means +2.2 and +1.7); minus magnitude, means +0.6 and +0.7 but one seed at -0.2, so on
    this suite the two are close and only a non-negative mean is asked; minus LoRA r=8, means -0.1 and -0.1 with
    seeds from -0.6 to +0.4, so a mean no worse than one point is asked.

    The tiny CLIP's pretraining is bit-identical on one machine but not across processors (its float kernels differ),
    and a build on another machine gave, minus random per seed, +2.5 / +2.6 / 0.0 (mean +1.7), minus magnitude mean
    +0.5, minus LoRA mean 0.0. So per seed the test asks that sensitivity is never worse than random (a tie allowed),
    and on the mean the margins above, which held on both builds."""
    r = chapter_result("spt")
    m = r.metrics
    assert m["min_over_seeds[SPT-LoRA - random mask]"] >= 0.0, m
    assert m["mean_over_seeds[SPT-LoRA - random mask]"] >= 1.0, m
    assert m["mean_over_seeds[SPT-LoRA - magnitude mask]"] >= 0.0, m
    assert m["mean_over_seeds[SPT-LoRA - LoRA r=8]"] >= -1.0, m
    assert len(r.claims["spt_vs_random"].per_seed) == 3


@pytest.mark.slow
def test_spt_page_shows_the_run(built_book):
    m = load_record("05_spt", "ci", book.ROOT / "results")["metrics"]
    assert m == chapter_result("spt").metrics   # the page's record is the runner's run
    html = (built_book / "notebooks" / "05_spt.html").read_text()
    assert f"{m['vtab_mean[SPT-LoRA]']:.1f}%" in html and "SNELL" in html and "not run" in html


@pytest.mark.slow
def test_contrastive_da_claims_on_ci(ci_chapters):
    """The paper's claim on the returns-desk task (3 seeds, 500 labels): per-modality contrastive heads on frozen
    embeddings beat the raw and the PCA-reduced embeddings on target-domain macro-F1 (mean over the downstream
    classifiers), and a joint head is not worse than raw on average.

    Margins from two runs of the same seeds (head training on a CPU is reproducible only to float rounding, which
    the downstream classifiers can amplify): per seed 0 / 1 / 2, heads minus raw +3.0 / +3.6 / +2.0
    and +3.0 / +3.6 / +1.4; heads minus PCA +3.9 / +3.7 / +0.9 and +3.9 / +3.7 / +0.3; joint head minus raw
    -0.5 / +2.4 / +5.5 both times. The test asks for a mean gain of at least one point over raw and over PCA, no seed
    more than one point below either, and a non-negative mean for the joint head."""
    m = chapter_result("contrastive-da").metrics
    for base in ("raw", "PCA"):
        assert m[f"mean_over_seeds[heads - {base}]"] >= 1.0, m
        assert m[f"min_over_seeds[heads - {base}]"] >= -1.0, m
    assert m["mean_over_seeds[joint head - raw]"] >= 0.0, m


@pytest.mark.slow
def test_contrastive_da_page_shows_the_run(built_book):
    m = load_record("03_contrastive_da", "ci", book.ROOT / "results")["metrics"]
    assert m == chapter_result("contrastive-da").metrics   # the page's record is the runner's run
    html = (built_book / "notebooks" / "03_contrastive_da.html").read_text()
    assert f"{m['macro_f1_mean[contrastive heads, per modality]']:.1f}%" in html and "emb-adapt-cl" in html
    assert "not run" in html and html.count("<img") >= 4 and "2502.02048" in html
    assert "emergentmind" not in html and "sciencestack" not in html   # primary sources only


@pytest.mark.slow
def test_peclip_claims_on_ci(ci_chapters):
    """PE-CLIP's claims on the generated face clips (2 seeds): the full model beats zero-shot on UAR by a wide margin
    and describing the classes by Action Units beats their names zero-shot (on the apex frame, where the text side
    alone is tested: whole clips are near chance for both). Whether it beats a linear probe on the frozen features,
    and whether the temporal adapter beats mean pooling, is seed noise at this size (below), so the test asks only
    that the chapter reports those claims per seed; the page glues their verdicts.

    Margins from the run that set the test (400 training clips, batch 8, 7 epochs), per seed 0 / 1: PE-CLIP minus
    the linear probe +7.2 / +9.2, minus zero-shot +27.2 / +30.8; TDA minus mean pooling +0.7 / +4.5 (with 6 epochs
    it was -15.1 / +6.4 at batch 16 and +2.6 / -1.4 at batch 8, so only a non-negative mean is asked); apex-frame AU
    minus names +12.9,
    bootstrap interval from +8.6.

    The tiny CLIP's pretraining is bit-identical on one machine but not across processors, and a build on another
    machine gave PE-CLIP minus the probe +0.3 / +1.7, minus zero-shot +27.2 / +29.9, TDA minus mean pooling +3.2 /
    +5.1, apex interval from +11.8. The test asks for a gain over the probe on every seed (the sign, which held on
    both builds; its size depends on the build), +10 over zero-shot, a non-negative mean for TDA over mean pooling,
    and a bootstrap interval above zero.

    With the run seeds spawned from seed 0 and one thread per run, PE-CLIP minus the probe was -4.5 / -8.8 and TDA
    minus mean pooling -8.3 / -8.1, while minus zero-shot stayed +23.0 / +18.0 and the apex interval started at +11.8:
    over three draws the probe comparison ranged from -8.8 to +9.2. The test keeps what held on every draw: +10 over
    zero-shot on every seed and an apex interval above zero."""
    r = chapter_result("peclip")
    m = r.metrics
    assert m["uar_gain_min[PE-CLIP − zero-shot (AU)]"] >= 10.0, m
    assert m["apex_zero_shot_uar_gain_ci_low"] > 0.0, m
    for key in ("pe_probe", "pe_tda", "pe_zs"):
        assert len(r.claims[key].per_seed) == 2, r.claims
    assert r.claims["pe_zs"].outcome == "every", r.claims


@pytest.mark.slow
def test_peclip_page_shows_the_run(built_book):
    m = load_record("01_peclip", "ci", book.ROOT / "results")["metrics"]
    assert m == chapter_result("peclip").metrics   # the page's record is the runner's run
    html = (built_book / "notebooks" / "01_peclip.html").read_text()
    assert f"{m['uar[PE-CLIP]']:.1f}%" in html and "62.82" in html and "not run" in html
    assert html.count("<img") >= 3


@pytest.mark.slow
def test_vlpet_claims_on_ci(ci_chapters):
    """VL-PET on the micro-world tasks (600 examples per task, 10 epochs; 3 seeds for the rows the claim compares).

    The paper's claim (VL-PET-large above VL-Adapter and LoRA on the average) did not reproduce at this scale when the
    test was set: VL-PET-large minus VL-Adapter -24.7 / -17.2 / -25.2 per seed, minus LoRA -15.0 / -11.7 / -23.3. The
    test guards
    what the chapter's prose says about the run: full fine-tuning first by far (+63 over the next row), the claim's
    gaps negative, every parameter-efficient method below the untrained model's caption CIDEr (691 against at most
    510), and VL-PET-large's loss on the first batch above VL-Adapter's (1.08 against 0.95). If a change makes the
    claim reproduce, this test fails and the prose must be revisited.

    Whether the gated variants lose more caption quality than VL-Adapter is seed noise at this size: below it by 26
    or more with seeds 0-2, all above it with the seeds spawned from seed 0 (VL-PET-large 476 against 457); the prose
    glues the count."""
    r = chapter_result("vlpet")
    m = r.metrics
    rows = {k[len("average["):-1] for k in m if k.startswith("average[")}
    pet = rows - {"full", "pretrained, no training"}
    assert {"vl-pet-large", "vl-adapter", "lora", "bitfit", "prompt"} <= pet, rows
    assert all(m["average[full]"] >= m[f"average[{x}]"] + 20 for x in pet), m
    assert m["average_gain_mean[vs vl-adapter]"] < 0 and m["average_gain_mean[vs lora]"] < 0, m
    assert all(m[f"caption[{x}]"] < m["caption[pretrained, no training]"] for x in pet), m
    gated = {x for x in pet if x.startswith("vl-pet") or x == "vl-adapter+g-large"}
    below = sum(m[f"caption[{x}]"] < m["caption[vl-adapter]"] for x in gated)
    assert r.texts["vl_gated_caption_en"].startswith(f"{below} of the {len(gated)} gated"), r.texts
    best = max(pet, key=lambda x: m[f"average[{x}]"])   # the glued verdict names the row the numbers give
    assert r.texts["vl_full_verdict_en"] == (f"Full fine-tuning was the best row, "
                                             f"{m['average[full]'] - m[f'average[{best}]']:.1f} points above the best "
                                             f"parameter-efficient one ({best})"), r.texts["vl_full_verdict_en"]
    assert m["first_loss[vl-pet-large]"] > m["first_loss[vl-adapter]"], m
    assert r.claims["vl"].outcome == "none" and len(r.claims["vl"].per_seed) == 3, r.claims


@pytest.mark.slow
def test_vlpet_page_shows_the_run(built_book):
    m = load_record("02_vlpet", "ci", book.ROOT / "results")["metrics"]
    r = chapter_result("vlpet")
    assert m == r.metrics   # the page's record is the runner's run
    html = (built_book / "notebooks" / "02_vlpet.html").read_text()
    assert r.claims["vl"].verdict("en") in html and r.claims["vl"].verdict("ja") in html
    assert f"{m['average[vl-pet-large]']:.1f}" in html and "79.18" in html
    assert "not run on this profile" in html and html.count("<img") >= 4


@pytest.mark.slow
def test_arena_chapter_on_ci(ci_chapters):
    """The arena on ci: every registered method ran on every task and seed and on the face clips, and every method
    with a test-time view on every corrupted stream with each test-time method; and what the teaching page says
    about memory holds on this run: the methods that train nothing inside the backbone hold a small share of full
    fine-tuning's memory, while LoRA, adapters and SPT-LoRA hold far more than their trainable share."""
    from clipadapt import arena
    rec = chapter_result("arena").record
    runs = rec.tables["runs"]
    assert sorted({r["method"] for r in runs}) == sorted(arena.ARENA) and len(runs) == len(arena.ARENA) * 3 * 3
    board = {r["method"]: r for r in rec.tables["board"]}
    assert all(board[m]["memory / full FT"] < 0.2 for m in ("linear probe", "contrastive head")), board
    assert all(board[m]["memory / full FT"] > 5 * board[m]["trainable share"] for m in ("LoRA", "adapter", "SPT-LoRA"))
    pick = rec.tables["pick"]
    assert pick["pick"] in pick["within_one_std"] and pick["best"] in pick["within_one_std"]
    # the robustness track: every method with a test-time view x (none, Tent, BATCLIP) x streams x seeds
    rob = rec.tables["robustness"]
    with_view = sorted(x for x in arena.ARENA if arena.ARENA[x].family != "embeddings")
    assert sorted({r["method"] for r in rob}) == with_view
    assert len(rob) == len(with_view) * len(arena.TEST_TIME) * len({r["corruption"] for r in rob}) * 3
    # the face clips: every method on every seed
    face = rec.tables["face_clips"]
    assert sorted({r["method"] for r in face}) == sorted(arena.ARENA) and len(face) == len(arena.ARENA) * 3


@pytest.mark.slow
def test_arena_page_shows_the_run(built_book):
    from clipadapt import arena
    rec = load_record("06_arena", "ci", book.ROOT / "results")
    assert rec["metrics"] == chapter_result("arena").metrics   # the page's record is the runner's run
    m, pick = rec["metrics"], rec["tables"]["pick"]
    html = (built_book / "notebooks" / "06_arena.html").read_text()
    assert f"{m['best_acc']:.1f}" in html and f"{m['pick_acc']:.1f}" in html and pick["pick"] in html
    assert f"{m['batclip_vs_zero_shot_per_batch']:.1f}" in html and html.count("<img") >= 4
    assert f"{m['robust_zero_shot_batclip_gain']:+.1f} points" in html
    best = max(arena.ARENA, key=lambda x: m[f"clips_acc[{x}]"])
    assert f"Most accurate on the clips: {best} ({m[f'clips_acc[{best}]']:.1f}%" in html


@pytest.mark.slow
def test_reproduction_report_gathers_every_chapters_published_numbers(built_book):
    """The report page lists a row per published number of every paper chapter, with a status from the allowed set,
    and its glued counts add up; on ci the trainable shares of VL-PET on BART-base are counted, so they are checked
    (and match Table 2) under their own status (a count is not a reproduced result), while the paper-only numbers say
    so; BATCLIP's rows come from the paper's main table."""
    from clipadapt.results import STATUSES, reproduction_report
    rows, env = reproduction_report(book.ROOT / "results", "ci")
    chapters = {r["chapter"] for r in rows}
    assert chapters == {"01_peclip", "02_vlpet", "03_contrastive_da", "04_batclip", "05_spt"}, chapters
    assert {r["status"] for r in rows} <= set(STATUSES)
    shares = [r for r in rows if r["chapter"] == "02_vlpet" and "trainable share" in r["quantity"]]
    assert len(shares) == 10 and all(r["status"] == "count matches the architecture" for r in shares), shares
    assert not any(r["status"] == "reproduced within tolerance" for r in rows if "trainable" in r["quantity"])
    bat = [r for r in rows if r["chapter"] == "04_batclip"]
    assert len(bat) == 9 and {r["published"] for r in bat} >= {73.85, 42.09, 30.72, 61.16} and \
        all("sarthaxxxxx.github.io/BATCLIP" in r["source"] for r in bat)
    assert all(r["status"] == "data needs a licence" for r in rows if r["chapter"] == "01_peclip")
    assert all(r["status"] == "not run on this profile" for r in rows
               if r["chapter"] in ("04_batclip", "05_spt") or "average" in r["quantity"])
    html = (built_book / "notebooks" / "90_reproduction.html").read_text()
    assert "79.18" in html and "SNELL" in html and html.count("<img") >= 1
    n = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    glued = lambda v: f'<span class="pasted-text">{v}</span>'
    assert glued(len(rows)) in html and glued(n["reproduced within tolerance"]) in html
    assert glued(n["not run on this profile"]) in html and glued(len(chapters)) in html
    assert glued(n["count matches the architecture"]) in html
    assert {e["notebook"] for e in env} == chapters


@pytest.mark.slow
def test_own_images_page_shows_the_run_and_its_report(built_book):
    """`clipadapt adapt` on the textile images: every arena row that fits the tiny CLIP ran over the seeds, the pick
    follows the arena's rule, the predict step agreed with the run (the chapter raises otherwise), and the page shows
    the report's figures and the glued numbers."""
    res = chapter_result("own-images").record.tables["adapt"]
    assert len(res["tables"]["runs"]) == len(res["info"]["methods"]) * len(res["info"]["seeds"]) >= 3 * 8
    board = {r["method"]: r for r in res["tables"]["summary"]}
    pick, best = res["tables"]["pick"]["pick"], res["tables"]["pick"]["best"]
    assert board[best]["mean"] == max(r["mean"] for r in board.values())
    assert board[pick]["mean"] >= board[best]["mean"] - (board[best]["std"] or 0.0)
    m = load_record("07_own_images", "ci", book.ROOT / "results")["metrics"]
    html = (built_book / "notebooks" / "07_own_images.html").read_text()
    assert f"{m['pick_accuracy']:.1f}" in html and html.count("<img") >= 3 and "conformal-clip-data" in html


@pytest.mark.slow
def test_decision_boxes_paste_their_costs_from_the_costs_page(built_book):
    """The boxes' cost lines are glued across pages from the costs page's run (no typed GPU-hours)."""
    t = chapter_result("costs").texts
    for page, key in (("01_peclip", "pc_peclip_s1000"), ("02_vlpet", "pc_vlpet_s1000"),
                      ("03_contrastive_da", "pc_da_s1000"), ("04_batclip", "pc_batclip_c10_hours"),
                      ("05_spt", "pc_spt_hours")):
        html = (built_book / "notebooks" / f"{page}.html").read_text()
        shown = format(t[key], ".2g")   # two significant digits: a cost never reads "0.0" or "0"
        assert shown in html and float(shown) > 0, (page, key, shown)
