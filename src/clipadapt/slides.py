"""Slides for training sessions: one reveal.js deck per chapter and language, from the executed chapter notebooks.

    python -m clipadapt.book slides   # what `make slides` runs once the book is built (`make book`)

A deck holds the chapter's title, its three points for decision makers and its decision box (one slide per label),
the method's diagram (`clipadapt.diagrams`), every captioned figure of the run with its caption, what the chapter
shows, the self-check questions and the teaching page's exercises, each answer or solution on the slide below (the
down arrow). Glued values are filled in from the run that the book shows, so a deck says what the page says; maths
shows as TeX (no MathJax). nbconvert's reveal template draws the decks (`templates/clipadapt_slides`); reveal.js
comes from the sphinx-revealjs package and is copied next to them, so they work offline. The book build writes them
to `_build/_build/html/slides/`, where the teaching pages link them.
"""
from __future__ import annotations

import ast
import base64
import json
import re
import shutil
import textwrap
from pathlib import Path
from typing import Any

import nbformat
from nbconvert import SlidesExporter

from . import diagrams
from .sphinxext import CJK

DECKS = ("01_peclip", "02_vlpet", "03_contrastive_da", "04_batclip", "05_spt", "06_arena", "07_own_images")
LANGS = ("en", "ja")
TEMPLATES = Path(__file__).parent / "templates"
GLUE = re.compile(r"\{glue:text\}`([^`:]+?(?:\.ipynb::[^`:]+)?)(?::([^`]*))?`")
# a line break or blank between two Japanese characters, also across bold marks (not a blank line: a paragraph ends)
SOFT_GAP = re.compile(f"(?<=[{CJK}])(\\*\\*)?(?:[ \\t]+|[ \\t]*\\n[ \\t]*)(\\*\\*)?(?=[{CJK}])")
ROLE = re.compile(r"\{(?:doc|term|ref)\}`([^`<]*?)\s*(?:<([^`>]*)>)?`")
JA = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
LEADS = {"en": ("**For decision makers", "**Decision box", "**In a meeting"),
         "ja": ("**意思決定者向け", "**判断のための要点", "**会議で使えるフレーズ")}
TITLES = {"en": {"points": "For decision makers", "diagram": "Where it trains", "shows": "What the chapter shows",
                 "question": "Check yourself", "answer": "Answer", "solution": "Solution"},
          "ja": {"points": "意思決定者向けの要点", "diagram": "どこを学習するか", "shows": "この章で分かったこと",
                 "question": "理解度チェック", "answer": "答え", "solution": "解答"}}


def glue_values(nb: dict) -> dict[str, Any]:
    """The values a notebook glued (myst-nb `glue`), read back from its outputs."""
    values = {}
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:
                text = next(v for k, v in out["data"].items() if k.endswith("text/plain"))
                values[name] = _literal("".join(text) if isinstance(text, list) else text)
    return values


def _literal(text: str) -> Any:
    inner = re.fullmatch(r"np\.\w+\((.*)\)", text)
    try:
        return ast.literal_eval(inner.group(1) if inner else text)
    except (ValueError, SyntaxError):
        return text


def tab(markdown: str, lang: str) -> str | None:
    """The text of the `lang` item of the first language tab-set in a markdown source (None where there is none)."""
    m = re.search(rf":sync: {lang}\n(.*?)\n:::\n", markdown, re.S)
    return m.group(1).strip() if m else None


def plain(text: str, glue: dict[str, Any], site: Path) -> str:
    """MyST to the Markdown nbconvert renders: glued values filled in, links and terms as their text."""
    def value(m: re.Match) -> str:
        name, spec = m.group(1), m.group(2) or ""
        if "::" in name:
            page, name = name.split("::")
            values = glue_values(json.loads((site / page).read_text()))
        else:
            values = glue
        if name not in values:
            raise KeyError(f"the slides need the glued value {name!r}, which the run did not glue: rebuild the book "
                           "(make book) so the executed notebooks are current")
        return format(values[name], spec)
    text = ROLE.sub(lambda m: m.group(1) or Path(m.group(2) or "").name, GLUE.sub(value, text))
    # a wrapped Japanese line is one line, as on the book's pages
    return SOFT_GAP.sub(lambda m: (m.group(1) or "") + (m.group(2) or ""), text)


def _slide(source: str, kind: str = "slide") -> nbformat.NotebookNode:
    # bold as HTML: Markdown does not close "**要点。**この" (punctuation before the mark, a letter after it)
    source = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", source, flags=re.S)
    return nbformat.v4.new_markdown_cell(source, metadata={"slideshow": {"slide_type": kind}})


def _figure(png: str, caption: str) -> list[nbformat.NotebookNode]:
    cell = nbformat.v4.new_code_cell("", metadata={"slideshow": {"slide_type": "slide"}})
    cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": png})]
    return [cell, _slide(f'<p class="caption">{caption}</p>', "-")]


def half(text: str, lang: str) -> str:
    """One language of a bilingual "English / 日本語" title or caption: split at the first " / " after which the
    text is Japanese."""
    for m in re.finditer(" / ", text):
        if JA.search(text[m.end():]) and not JA.search(text[:m.start()]):
            return text[:m.start()] if lang == "en" else text[m.end():]
    return text


def _decision_slides(first: str, lang: str) -> list[nbformat.NotebookNode]:
    """The three points, the decision box (its analogy, then one slide per label) and the meeting phrases."""
    cells = []
    for block in re.split(r"\n\s*\n", first):
        if block.startswith(LEADS[lang][0]):
            cells.append(_slide(f"## {TITLES[lang]['points']}\n\n" + block.split("\n", 1)[1]))
        elif block.startswith(LEADS[lang][1]):
            intro, *items = re.split(r"\n(?=- )", block)
            cells.append(_slide(intro))
            for item in items:
                m = re.match(r"- \*\*(.+?)[:：]?\*\*[:：]?\s*(.*)", item, re.S)
                cells.append(_slide(f"## {m.group(1)}\n\n{m.group(2)}" if m else item))
        elif block.startswith(LEADS[lang][2]):
            cells.append(_slide(block))
    return cells


def _answer(text: str) -> tuple[str, str | None]:
    """A text and the dropdown that hides its answer (the text before it, the answer dedented; None: no dropdown)."""
    m = re.search(r"\n[ \t]*(`{3,})\{dropdown\}[^\n]*\n(.*?)\n[ \t]*\1[ \t]*(?=\n|$)", text, re.S)
    return (text[:m.start()].strip(), textwrap.dedent(m.group(2)).strip()) if m else (text.strip(), None)


def _questions(text: str, lang: str) -> list[nbformat.NotebookNode]:
    """One slide per self-check question, its answer on the slide below."""
    cells = []
    for q in re.split(r"\n(?=\d+\. )", text):
        question, answer = _answer(q)
        cells.append(_slide(f"## {TITLES[lang]['question']}\n\n{question}"))
        if answer:
            cells.append(_slide(f"## {TITLES[lang]['answer']}\n\n{answer}", "subslide"))
    return cells


def exercises(teaching: str, lang: str, site: Path) -> list[nbformat.NotebookNode]:
    """The exercises of a teaching page: one slide per exercise, its solution on the slide below."""
    section = re.search(r"\n## Exercises[^\n]*\n(.*?)(?=\n## |\Z)", teaching, re.S)
    cells = []
    for part in re.split(r"\n(?=### )", section.group(1) if section else "")[1:]:
        heading, body = part.split("\n", 1)
        task, solution = _answer(plain(tab(body, lang) or "", {}, site))
        cells.append(_slide(f"## {half(heading.lstrip('# ').strip(), lang)}\n\n{task}"))
        if solution:
            cells.append(_slide(f"## {TITLES[lang]['solution']}\n\n{solution}", "subslide"))
    return cells


def deck(nb: dict, lang: str, site: Path, teaching: str = "") -> nbformat.NotebookNode:
    """The slides of one executed chapter notebook in one language, then the exercises of its teaching page."""
    glue = glue_values(nb)
    cells, section = [], ""
    cells.append(_slide("# " + half("".join(nb["cells"][0]["source"]).lstrip("# ").strip(), lang)))
    first = True
    for cell in nb["cells"][1:]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            if source.startswith("## "):
                section = source
                continue
            diagram = re.search(r"\{clipadapt-diagram\}\s+(\w+)", source)
            if diagram:
                _, en, ja = diagrams.DIAGRAMS[diagram.group(1)]
                png = base64.b64encode(diagrams.png(diagram.group(1))).decode()
                cells += _figure(png, en if lang == "en" else ja)
                continue
            text = tab(source, lang)
            if text is None:
                continue
            text = plain(text, glue, site)
            if first:
                cells += _decision_slides(text, lang)
                first = False
            elif section.startswith("## What this chapter shows"):
                cells.append(_slide(f"## {TITLES[lang]['shows']}\n\n{text}"))
            elif section.startswith("## Check yourself"):
                cells += _questions(text, lang)
        else:
            figure = cell.get("metadata", {}).get("mystnb", {}).get("figure")
            pngs = [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})
                    and "scrapbook" not in o.get("metadata", {})]
            if figure and pngs:
                cells += _figure(pngs[0], half(figure["caption"], lang))
    cells += exercises(teaching, lang, site)
    return nbformat.v4.new_notebook(cells=cells, metadata={"title": cells[0].source.lstrip("# "),
                                                           "language_info": {"name": "python"}})


def build(site: Path, out: Path, teaching: Path) -> list[Path]:
    """Write every deck (`<chapter>.<lang>.html`) from the executed notebooks in `site` and the teaching pages in
    `teaching`, and the reveal.js they load, into `out`; returns the decks."""
    missing = [name for name in DECKS if not (site / f"{name}.ipynb").exists()]
    if missing:
        raise FileNotFoundError(f"no executed notebook for {', '.join(missing)} in {site}: build the book first "
                                "(make book), then make slides")
    import sphinx_revealjs
    reveal = Path(sphinx_revealjs.__file__).parent / "_static" / "revealjs"
    out.mkdir(parents=True, exist_ok=True)
    fonts = "dist/theme/fonts/source-sans-pro"   # the white theme's font (woff: what browsers load)
    for part in ("LICENSE", "dist/reveal.js", "dist/reveal.css", "dist/theme/white.css", "plugin/notes/notes.js",
                 *(f"{fonts}/{f.name}" for f in (reveal / fonts).iterdir() if f.suffix in (".woff", ".css", ""))):
        (out / "reveal.js" / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(reveal / part, out / "reveal.js" / part)
    exporter = SlidesExporter(extra_template_basedirs=[str(TEMPLATES)], template_name="clipadapt_slides",
                              reveal_url_prefix="reveal.js", reveal_theme="white", exclude_input=True,
                              exclude_input_prompt=True, exclude_output_prompt=True, exclude_anchor_links=True)
    written = []
    for name in DECKS:
        nb = json.loads((site / f"{name}.ipynb").read_text())
        for lang in LANGS:
            page = (teaching / f"{name}.md").read_text()
            body, _ = exporter.from_notebook_node(deck(nb, lang, site, page), resources={"language_code": lang})
            path = out / f"{name}.{lang}.html"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(body)
            tmp.replace(path)
            written.append(path)
    return written
