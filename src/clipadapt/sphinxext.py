"""The book's Sphinx extension (loaded from _config.yml): the edition on the front page and two page fixes.

- `build_info.json`, written by `python -m clipadapt.book build` next to the staged sources, becomes MyST
  substitutions ({{ build_date }}, {{ build_profile }}, {{ build_commit }}, {{ build_versions }}) so the front page
  says which run the published site shows.
- Sphinx 7.4 writes an inline script that an extension adds after the builder starts twice into every page;
  sphinx-thebe's `const THEBE_JS_URL` then throws in the browser. Repeated scripts are dropped.
- pydata-sphinx-theme reads a `default_mode` that nothing sets, which logs an error in the browser; it is set to
  "auto" (the reader's system preference).
"""
from __future__ import annotations

import json
from pathlib import Path

from sphinx.errors import ExtensionError

BUILD_INFO = "build_info.json"


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


def _nojekyll(app, exception) -> None:
    if exception is None and app.builder.format == "html":
        (Path(app.outdir) / ".nojekyll").touch()  # GitHub Pages serves _static/ and _images/ as they are


def setup(app):
    app.connect("config-inited", _substitutions)
    app.connect("html-page-context", _page_fixes)
    app.connect("build-finished", _nojekyll)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
