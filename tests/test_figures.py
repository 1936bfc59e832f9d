"""Figures, tables and slides: the method diagrams drawn at build time, numbered captions, Japanese column names,
and the training decks built from the chapters' runs."""
import base64
import io
import json
import re
import subprocess
import sys
from html import escape
from pathlib import Path

import nbformat
import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.patches import FancyBboxPatch
from PIL import Image

from clipadapt import book, diagrams, slides, tables
from clipadapt.sphinxext import CJK_GAP

METHOD_DIAGRAMS = {"01_peclip": "peclip", "02_vlpet": "vlpet", "03_contrastive_da": "contrastive_da",
                   "04_batclip": "batclip", "05_spt": "spt"}
TRAINED = diagrams.STYLE["trained"][0]


def _trained_boxes(fig) -> int:
    return sum(1 for p in fig.axes[0].patches if isinstance(p, FancyBboxPatch)
               and np.allclose(p.get_facecolor()[:3], to_rgb(TRAINED)))


def test_every_method_diagram_marks_trained_parts_and_clip_has_none():
    for name in diagrams.DIAGRAMS:
        n = _trained_boxes(diagrams.draw(name))
        assert (n == 0) if name == "clip" else (n >= 1), (name, n)
        image = Image.open(io.BytesIO(diagrams.png(name)))
        assert image.width > 600 and image.height > 300, name
    assert diagrams.png("spt") == diagrams.png("spt")   # no time stamp: the same drawing, the same bytes
    with pytest.raises(KeyError, match="the diagrams are clip, peclip"):
        diagrams.draw("lora")


def test_every_cell_that_draws_has_a_caption_in_both_languages_and_a_name():
    """Checked on the sources (the built book checks the numbers): a figure cell carries `mystnb.figure`."""
    drawing = re.compile(r"\bplt\.|image_grid\(|\.plot[.(]|\bsns\.|heatmap\(|subplots\(")
    names = []
    for path in book.notebooks():
        for cell in nbformat.read(path, as_version=4).cells:
            code = "\n".join(x for x in cell.source.splitlines() if not x.lstrip().startswith(("import", "from", "#")))
            if cell.cell_type == "code" and drawing.search(code):
                figure = cell.metadata.get("mystnb", {}).get("figure", {})
                caption = figure.get("caption", "")
                assert slides.half(caption, "en") != slides.half(caption, "ja"), (path.name, cell.id, caption)
                names.append(figure.get("name"))
    assert len(names) >= 30 and None not in names and len(set(names)) == len(names)


def test_each_method_chapter_and_the_intro_place_their_diagram():
    for stem, name in METHOD_DIAGRAMS.items():
        nb = nbformat.read(book.ROOT / "notebooks" / f"{stem}.ipynb", as_version=4)
        placed = re.findall(r"\{clipadapt-diagram\}\s+(\w+)", "\n".join(c.source for c in nb.cells))
        assert placed == [name], (stem, placed)
    assert "{clipadapt-diagram} clip" in (book.ROOT / "book" / "intro.md").read_text()


def test_the_sphinx_extension_numbers_and_captions_diagrams_and_names_table_columns_in_japanese(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "build_info.json").write_text(json.dumps({"date": "d", "profile": "ci", "commit": "c", "versions": {}}))
    (src / "conf.py").write_text("extensions = ['myst_parser', 'clipadapt.sphinxext']\nnumfig = True\n")
    (src / "index.rst").write_text(
        "Title\n=====\n\n.. clipadapt-diagram:: batclip\n\n.. clipadapt-diagram:: spt\n\n"
        ".. raw:: html\n\n   <table><thead><tr><th>method</th><th>mean</th><th>UAR</th></tr></thead>"
        "<tbody><tr><th>mean</th><td>1</td><td>2</td></tr></tbody></table>\n")
    res = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-W", "-q", str(src), str(tmp_path / "out")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    html = (tmp_path / "out" / "index.html").read_text()
    assert html.count('src="data:image/png;base64,') == 2
    assert "Fig. 1" in html and "Fig. 2" in html
    assert diagrams.DIAGRAMS["batclip"][1] in html and diagrams.DIAGRAMS["batclip"][2] in html
    head = html[html.index("<thead>"):html.index("</thead>")]
    assert "method<br><span" in head and "手法" in head and "平均" in head and "UAR</th>" in head
    assert "<tr><th>mean</th>" in html   # row labels are left as they are

    (src / "index.rst").write_text("Title\n=====\n\n.. clipadapt-diagram:: lora\n")
    res = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-W", "-q", str(src), str(tmp_path / "out")],
                         capture_output=True, text=True)
    assert res.returncode != 0 and "no diagram 'lora'; the diagrams are clip" in res.stderr


def test_bilingual_headers_touch_only_the_header_and_only_once():
    html = ('<table><thead><tr><th class="blank">&nbsp;</th><th class="col_heading level0 col0">trainable (%)</th>'
            '<th>BATCLIP</th></tr></thead><tbody><tr><th>trainable (%)</th><td>1</td></tr></tbody></table>')
    once = tables.bilingual_headers(html)
    assert once.count("clipadapt-ja") == 1 and tables.JA["trainable (%)"] in once
    assert tables.bilingual_headers(once) == once
    assert tables.column_names(html) == ["trainable (%)", "BATCLIP"]
    assert not set(tables.JA) & tables.KEEP


def _deck_source(tmp_path: Path) -> tuple[dict, Path]:
    """A small executed chapter: a title, a decision box, a figure, a conclusion and a question; a costs page."""
    def glue(name, value):
        prefix = "application/papermill.record/"
        return nbformat.v4.new_output("display_data", data={prefix + "text/plain": repr(value)},
                                      metadata={"scrapbook": {"name": name, "mime_prefix": prefix}})

    def tabs(en, ja):
        return nbformat.v4.new_markdown_cell(f"::::{{tab-set}}\n:sync-group: lang\n\n:::{{tab-item}} English\n"
                                             f":sync: en\n\n{en}\n:::\n\n:::{{tab-item}} 日本語\n:sync: ja\n\n{ja}\n"
                                             ":::\n::::")
    png = base64.b64encode(diagrams.png("clip")).decode()
    run = nbformat.v4.new_code_cell("", metadata={"mystnb": {"figure": {"caption": "Gain / 伸び", "name": "fig-x"}}})
    run.outputs = [glue("acc", 71.234), glue("verdict_ja", "上回りました"),
                   nbformat.v4.new_output("display_data", data={"image/png": png})]
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# 4. BATCLIP: test time / 4. BATCLIP: テスト時"),
        tabs("**For decision makers, in three points.**\n1. Accuracy {glue:text}`acc:.1f`%.\n\n"
             "**Decision box.** Like white balance.\n- **Needs:** no labels.\n- **Cost:** "
             "{glue:text}`91_paper_costs.ipynb::pc_hours:.2g` GPU-hours ({doc}`costs <91_paper_costs>`).\n\n"
             "**In a meeting you can say:** \"It adapts.\"\n\n**Profiles:** ci and paper.",
             "**意思決定者向け・3つの要点**\n1. 精度は {glue:text}`acc:.1f`% で、\n   {glue:text}`verdict_ja`。\n\n"
             "**判断のための要点。** ホワイトバランスのようなものです。\n- **必要なもの:** ラベルは不要です。\n"
             "- **費用:** {glue:text}`91_paper_costs.ipynb::pc_hours:.2g` GPU 時間です。\n\n"
             "**会議で使えるフレーズ:** 「適応します」"),
        nbformat.v4.new_markdown_cell("## Method / 手法"),
        nbformat.v4.new_markdown_cell("```{clipadapt-diagram} batclip\n```"),
        run,
        nbformat.v4.new_markdown_cell("## What this chapter shows / この章で分かったこと"),
        tabs("- It adapts ({term}`LayerNorm`).", "- 適応します({term}`LayerNorm`)。"),
        nbformat.v4.new_markdown_cell("## Check yourself / 理解度チェック"),
        tabs("1. What trains?\n\n   - a) LayerNorms\n\n   ```{dropdown} Answer\n   a. Only those.\n   ```\n\n"
             "2. Why?\n\n   ```{dropdown} Answer\n   Because.\n   ```",
             "1. 何を学習しますか。\n\n   ```{dropdown} 答え\n   a. それだけです。\n   ```"),
    ])
    site = tmp_path / "site"
    site.mkdir()
    costs = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("")])
    costs.cells[0].outputs = [glue("pc_hours", 0.022617)]
    (site / "91_paper_costs.ipynb").write_text(nbformat.writes(costs))
    return json.loads(nbformat.writes(nb)), site


def test_a_deck_holds_the_box_the_diagram_the_figures_the_conclusion_and_each_question_with_its_answer(tmp_path):
    nb, site = _deck_source(tmp_path)
    teaching = ("# Teaching / 教え方\n\n## Exercises / 演習\n\n### Exercise 1: count / 演習1: 数える\n\n"
                "::::{tab-set}\n:sync-group: lang\n\n:::{tab-item} English\n:sync: en\n\nCount them:\n\n"
                "```python\nfor i in range(2):\n    print(i)\n```\n\n````{dropdown} Solution\n```python\nprint(2)\n```\n"
                "````\n:::\n\n:::{tab-item} 日本語\n:sync: ja\n\n数えてください。\n:::\n::::\n\n## Links / 関連ページ\n")
    en, ja = slides.deck(nb, "en", site, teaching), slides.deck(nb, "ja", site, teaching)
    text = [c.source for c in en.cells]
    assert text[0] == "# 4. BATCLIP: test time" and ja.cells[0].source == "# 4. BATCLIP: テスト時"
    assert "Accuracy 71.2%." in text[1] and "## Needs\n\nno labels." in text and "<strong>" in text[2]
    assert "## Cost\n\n0.023 GPU-hours (costs)." in text   # glued across pages, with its format; links as text
    assert not any("Profiles" in t for t in text)
    figures = [c for c in en.cells if c.cell_type == "code"]
    assert len(figures) == 2 and all("image/png" in f.outputs[0]["data"] for f in figures)   # diagram, run figure
    assert any(diagrams.DIAGRAMS["batclip"][1] in t for t in text) and '<p class="caption">Gain</p>' in text
    assert "## What the chapter shows\n\n- It adapts (LayerNorm)." in text
    questions = [c for c in en.cells if c.source.startswith("## Check yourself")]
    answers = [c for c in en.cells if c.source.startswith("## Answer")]
    assert len(questions) == 2 and len(answers) == 2 and "a. Only those." in answers[0].source
    assert answers[0].metadata["slideshow"]["slide_type"] == "subslide" and "dropdown" not in questions[0].source
    assert text[-2] == "## Exercise 1: count\n\nCount them:\n\n```python\nfor i in range(2):\n    print(i)\n```"
    assert text[-1] == "## Solution\n\n```python\nprint(2)\n```" and en.cells[-1].metadata["slideshow"]["slide_type"] == \
        "subslide"
    assert ja.cells[-1].source == "## 演習1: 数える\n\n数えてください。"   # no solution: no slide below
    ja_text = "\n".join(c.source for c in ja.cells)
    assert "精度は 71.2% で、上回りました。" in ja_text   # the wrapped Japanese line is joined
    assert "## 必要なもの\n\nラベルは不要です。" in ja_text and '<p class="caption">伸び</p>' in ja_text
    assert "## 理解度チェック" in ja_text and "a. それだけです。" in ja_text


def test_a_deck_says_which_glued_value_is_missing_and_make_slides_says_to_build_the_book_first(tmp_path):
    nb, site = _deck_source(tmp_path)
    nb["cells"][4]["outputs"] = nb["cells"][4]["outputs"][2:]
    with pytest.raises(KeyError, match="glued value 'acc'.*rebuild the book"):
        slides.deck(nb, "en", site)
    with pytest.raises(FileNotFoundError, match="no executed notebook for 01_peclip.*make book"):
        slides.build(tmp_path / "empty", tmp_path / "out", tmp_path)


@pytest.mark.slow
def test_every_chapter_figure_is_captioned_in_both_languages_and_numbered(built_book):
    for nb_path in book.notebooks():
        executed = nbformat.read(book.SITE / "notebooks" / nb_path.name, as_version=4)
        drawn = [c for c in executed.cells if c.cell_type == "code" and any(
            "image/png" in o.get("data", {}) and "scrapbook" not in o.get("metadata", {}) for o in c.outputs)]
        for cell in drawn:
            caption = cell.metadata.get("mystnb", {}).get("figure", {}).get("caption", "")
            assert slides.half(caption, "en") != slides.half(caption, "ja"), (nb_path.name, cell.id, caption)
        html = (built_book / "notebooks" / f"{nb_path.stem}.html").read_text()
        numbers = re.findall(r'<span class="caption-number">Fig\. (\d+) </span>', html)
        placed = len(drawn) + len(re.findall(r"\{clipadapt-diagram\}", nb_path.read_text()))
        numbers = [int(n) for n in numbers]   # numbered through the book, in the order of the table of contents
        assert len(numbers) == placed and numbers == list(range(numbers[0], numbers[0] + placed)) if placed else \
            not numbers, (nb_path.name, numbers, placed)


@pytest.mark.slow
def test_every_column_name_of_the_chapters_tables_has_a_japanese_name_or_reads_the_same(built_book):
    unknown = set()
    for nb_path in book.notebooks():
        executed = nbformat.read(book.SITE / "notebooks" / nb_path.name, as_version=4)
        for cell in executed.cells:
            for out in cell.get("outputs", []):
                if "text/html" in out.get("data", {}) and "<thead>" in out["data"]["text/html"]:
                    unknown |= {(nb_path.stem, n) for n in tables.column_names(out["data"]["text/html"])
                                if n not in tables.JA and n not in tables.KEEP}
    assert not unknown, f"give these column names a Japanese name in clipadapt/tables.py (or KEEP them): {unknown}"
    html = (built_book / "notebooks" / "04_batclip.html").read_text()
    assert '<span class="clipadapt-ja" lang="ja">ゼロショット</span>' in html


@pytest.mark.slow
def test_every_deck_is_built_offline_with_its_figures_and_linked_from_its_teaching_page(built_book):
    out = built_book / "slides"
    assert (out / "reveal.js" / "dist" / "reveal.js").exists() and (out / "reveal.js" / "plugin" / "notes").is_dir()
    for name in slides.DECKS:
        executed = nbformat.read(book.SITE / "notebooks" / f"{name}.ipynb", as_version=4)
        figures = sum(1 for c in executed.cells if c.cell_type == "code" and c.metadata.get("mystnb"))
        figures += name in METHOD_DIAGRAMS
        teaching = (built_book / "book" / "teaching" / f"{name}.html").read_text()
        for lang in slides.LANGS:
            html = (out / f"{name}.{lang}.html").read_text()
            assert html.count('src="data:image/png;base64,') >= figures, (name, lang)
            assert "{glue" not in html and "{doc}" not in html and "unpkg.com" not in html, (name, lang)
            assert html.count("<section") >= 8, (name, lang)
            page = (book.ROOT / "book" / "teaching" / f"{name}.md").read_text()
            titles = re.findall(r"^### (.*)$", re.search(r"\n## Exercises.*?(?=\n## )", page, re.S).group(0), re.M)
            assert len(titles) >= 3 and all(escape(slides.half(t, lang), quote=False) in html for t in titles), \
                (name, lang)
            assert f'href="../../slides/{name}.{lang}.html"' in teaching, (name, lang)
            if lang == "ja":   # no blank between two Japanese characters in a paragraph or a list item
                text = re.sub(r"<(code|pre|script|style)\b.*?</\1>", "x", html, flags=re.S)
                gaps = [g for m in re.finditer(r"<(p|li)\b[^>]*>(.*?)</\1>", text, re.S)
                        for g in CJK_GAP.findall(re.sub(r"<[^>]+>", "", m.group(2)))]
                assert not gaps, (name, len(gaps))
                assert name == "07_own_images" or re.search(r"<h2[^>]*>必要なもの", html), name
            assert "**" not in re.sub(r"<(code|pre|script|style)\b.*?</\1>", "", html, flags=re.S), (name, lang)
