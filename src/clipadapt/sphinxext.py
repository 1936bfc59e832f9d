"""The book's Sphinx extension (loaded from _config.yml): the edition on the front page and two page fixes.

- `build_info.json`, written by `python -m clipadapt.book build` next to the staged sources, becomes MyST
  substitutions ({{ build_date }}, {{ build_profile }}, {{ build_commit }}, {{ build_versions }}) so the front page
  says which run the published site shows.
- Sphinx 7.4 writes an inline script that an extension adds after the builder starts twice into every page;
  sphinx-thebe's `const THEBE_JS_URL` then throws in the browser. Repeated scripts are dropped.
- pydata-sphinx-theme reads a `default_mode` that nothing sets, which logs an error in the browser; it is set to
  "auto" (the reader's system preference).
- Japanese sources are hard-wrapped, and Chromium (Chrome, Edge) draws a line break between two CJK characters as a
  space; a blank written next to a link or bold text ("{doc}`章 <...>` では") shows the same way. Such breaks and
  blanks are removed from the text of every page once it is resolved (glued values included).
- `{clipadapt-diagram} name` draws one of `clipadapt.diagrams` at build time and places it as a numbered figure with
  its bilingual caption (`:name:` sets the label to refer to it).
- Result tables (pandas HTML in the notebooks' outputs) get a Japanese line under each English column name that
  `clipadapt.tables` translates.
"""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.errors import ExtensionError
from sphinx.util.docutils import SphinxDirective

from . import diagrams, tables

BUILD_INFO = "build_info.json"
# CJK punctuation, kana, ideographs and full-width forms: a line break between two of them is not a space in Japanese
CJK = "\u3001-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff01-\uffef"
CJK_GAP = re.compile(f"(?<=[{CJK}])[ \\t\\n]+(?=[{CJK}])")
VERBATIM = (nodes.literal_block, nodes.literal, nodes.math, nodes.math_block, nodes.raw, nodes.comment)


def _substitutions(app, config) -> None:
    path = Path(app.srcdir) / BUILD_INFO
    if not path.exists():
        raise ExtensionError(f"{path} is missing: build the book with `python -m clipadapt.book build` "
                             f"(it runs the notebooks, then writes {BUILD_INFO} and calls jupyter-book)")
    info = json.loads(path.read_text())
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    config.myst_substitutions = {**config.myst_substitutions, "build_date": info["date"],
                                 "build_profile": info["profile"], "build_commit": info["commit"],
                                 "build_versions": versions}


def _page_fixes(app, pagename, templatename, context, doctree) -> None:
    seen, kept = set(), []
    for js in context.get("script_files", []):
        key = (js.filename or "", js.priority, tuple(sorted(js.attributes.items())))
        if key not in seen:
            seen.add(key)
            kept.append(js)
    context["script_files"] = kept
    context.setdefault("default_mode", "auto")


def _verbatim(node, stop) -> bool:
    while node is not None and node is not stop:
        if isinstance(node, VERBATIM):
            return True
        node = node.parent
    return False


def join_cjk_lines(doctree) -> int:
    """Remove the line breaks and blanks between two CJK characters from every text node outside code and maths,
    looking across node borders (a break before a glossary link or a glued value); returns how many gaps."""
    removed = 0
    for block in doctree.findall(nodes.TextElement):
        if isinstance(block, (nodes.Inline, *VERBATIM)):
            continue  # inline text is joined with its paragraph; verbatim text keeps its breaks
        texts = list(block.findall(nodes.Text))   # code and maths count as neighbours but keep their text
        for i, t in enumerate(texts):
            if not any(ch in t for ch in " \t\n") or _verbatim(t, block):
                continue
            # code and maths are neighbours that keep their blank: they count as a Latin letter
            before = ("x" if _verbatim(texts[i - 1], block) else texts[i - 1][-1:]) if i else ""
            after = ("x" if _verbatim(texts[i + 1], block) else texts[i + 1][:1]) if i + 1 < len(texts) else ""
            padded = before + str(t) + after
            joined, n = CJK_GAP.subn("", padded)
            if n:
                removed += n
                parent = t.parent   # by identity: Text nodes compare equal by content, so replace() may pick another
                parent[next(k for k, c in enumerate(parent.children) if c is t)] = nodes.Text(
                    joined[len(before):len(joined) - len(after)])
    return removed


def _join_cjk(app, doctree, docname) -> None:
    join_cjk_lines(doctree)


class Diagram(SphinxDirective):
    """```{clipadapt-diagram} batclip``` : the drawing as a numbered figure, captioned in both languages."""
    required_arguments = 1
    option_spec = {"name": directives.unchanged}

    def run(self):
        name = self.arguments[0]
        if name not in diagrams.DIAGRAMS:
            raise self.error(f"no diagram {name!r}; the diagrams are {', '.join(diagrams.DIAGRAMS)} "
                             "(clipadapt/diagrams.py)")
        _, en, ja = diagrams.DIAGRAMS[name]
        uri = "data:image/png;base64," + base64.b64encode(diagrams.png(name)).decode()
        figure = nodes.figure("", nodes.image(uri=uri, alt=en), classes=["clipadapt-diagram"])
        figure += nodes.caption("", f"{en} / {ja}")
        figure["names"].append(self.options.get("name", f"diagram-{name}"))
        self.state.document.note_explicit_target(figure)
        return [figure]


def _bilingual_tables(app, doctree, docname) -> None:
    for raw in doctree.findall(nodes.raw):
        if "html" in raw.get("format", "") and "<thead" in raw.astext():
            html = tables.bilingual_headers(raw.astext())
            raw.children = [nodes.Text(html)]


def _nojekyll(app, exception) -> None:
    if exception is None and app.builder.format == "html":
        (Path(app.outdir) / ".nojekyll").touch()  # GitHub Pages serves _static/ and _images/ as they are


def setup(app):
    app.connect("config-inited", _substitutions)
    app.connect("html-page-context", _page_fixes)
    app.connect("doctree-resolved", _join_cjk)
    app.connect("doctree-resolved", _bilingual_tables)
    app.add_directive("clipadapt-diagram", Diagram)
    app.connect("build-finished", _nojekyll)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
