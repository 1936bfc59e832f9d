"""Build the book: run every notebook with papermill on a profile, stage the sources, `jupyter-book build`.

    python -m clipadapt.book build --profile ci      # what `make book` runs
    python -m clipadapt.book run notebooks/00_backbone.ipynb --profile ci
    python -m clipadapt.book check                    # English/Japanese parity of every page, one term per concept
    python -m clipadapt.book colab                    # write the Colab button and install cell into every notebook

The chapters' runs are computed first, side by side where the profile allows (`clipadapt.chapters.prepare`); each
notebook then reads its run back from the cache. Notebooks execute into `_build/site/notebooks/` (the committed notebooks stay output-free); the book is then built
from `_build/site/` with execution off and warnings as errors, into `_build/html/`.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .layout import ROOT, find_root, notebooks  # noqa: F401  (book.ROOT, book.notebooks() stay the book's names)

SITE = ROOT / "_build" / "site"
HTML = ROOT / "_build" / "_build" / "html"   # where jupyter-book writes the site
STAGED = ("_config.yml", "_toc.yml", "book", "src")
JA = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


def run_notebook(nb: Path, profile: str = "ci", out_dir: Path = SITE / "notebooks", timeout: int | None = None,
                 **parameters) -> Path:
    """Execute one notebook with papermill (parameters: profile + extras) into `out_dir`; returns the output path.

    No time limit per cell by default: a chapter's runner is one cell, and it takes what the machine takes (a busy
    2-core machine is several times slower); `timeout` (seconds per cell) sets one."""
    import papermill as pm

    from .profiles import get_profile
    get_profile(profile)  # unknown profiles fail here, before a kernel starts
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / Path(nb).name
    t0 = time.time()
    pm.execute_notebook(str(nb), str(out), parameters={"profile": profile, **parameters}, kernel_name="python3",
                        cwd=str(ROOT), execution_timeout=timeout, progress_bar=False, log_output=False)
    print(f"ran {Path(nb).name} on {profile} in {time.time() - t0:.0f} s")
    return out


def stage(root: Path = ROOT, site: Path = SITE) -> None:
    """Copy the book sources next to the executed notebooks (literalinclude paths stay valid)."""
    site.mkdir(parents=True, exist_ok=True)
    for name in STAGED:
        src, dst = root / name, site / name
        if dst.exists() or dst.is_symlink():
            shutil.rmtree(dst) if dst.is_dir() and not dst.is_symlink() else dst.unlink()
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dst)


def write_build_info(profile: str, site: Path = SITE) -> dict:
    """The edition the front page states (read by clipadapt.sphinxext): date, profile, commit, versions."""
    from datetime import datetime, timezone
    from importlib.metadata import version
    git = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    info = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "profile": profile,
            "commit": git.stdout.strip() if git.returncode == 0 else "(not a git checkout)",
            "versions": {name: version(name) for name in ("clipadapt", "torch", "open_clip_torch", "peft",
                                                           "transformers", "timm", "jupyter-book", "myst-nb")}}
    site.mkdir(parents=True, exist_ok=True)
    (site / "build_info.json").write_text(json.dumps(info, indent=1))
    return info


def build_html(site: Path = SITE) -> Path:
    """jupyter-book build with execution off and warnings as errors; returns the html folder."""
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(site), "--path-output", str(ROOT / "_build"),
           "--warningiserror", "--keep-going", "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"jupyter-book build failed:\n{res.stdout[-6000:]}\n{res.stderr[-6000:]}")
    return HTML


def build(profile: str = "ci", run: bool = True) -> Path:
    errors = check_parity()
    if errors:
        raise RuntimeError("bilingual parity check failed:\n" + "\n".join(errors))
    if run:
        from . import chapters  # heavy (torch): only when notebooks run
        chapters.prepare(profile)   # the chapters' runs side by side; each notebook then reads its run back
        for nb in notebooks():
            run_notebook(nb, profile)
    stage()
    write_build_info(profile)
    html = build_html()
    decks = build_slides()   # the training decks, linked from the teaching pages
    print(f"book built: {html / 'index.html'} ({len(decks)} slide decks in {html / 'slides'})")
    return html


def build_slides() -> list[Path]:
    """The training decks from the executed notebooks and the teaching pages, into the site's slides/ folder."""
    from . import slides   # nbconvert: only where the book is built
    return slides.build(SITE / "notebooks", HTML / "slides", ROOT / "book" / "teaching")


# ---------------------------------------------------------------- Colab

COLAB = "https://colab.research.google.com"


def release(root: Path = ROOT) -> tuple[str, str]:
    """(repository URL, release tag) from _config.yml's `repository` (the tag is also the launch buttons' branch).

    The tag must be "v" + the package version in pyproject.toml: Colab installs exactly the code the book describes.
    """
    import tomllib

    import yaml
    repo = yaml.safe_load((root / "_config.yml").read_text())["repository"]
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    if repo["branch"] != f"v{version}":
        raise ValueError(f"_config.yml repository.branch is {repo['branch']!r} but pyproject.toml's version is "
                         f"{version!r}: set the branch to 'v{version}' (the release tag) and run "
                         f"`python -m clipadapt.book colab`")
    return repo["url"].rstrip("/"), repo["branch"]


def colab_url(nb: Path, root: Path = ROOT) -> str:
    url, tag = release(root)
    return f"{COLAB}/github/{url.split('github.com/')[1]}/blob/{tag}/{Path(nb).relative_to(root).as_posix()}"


def colab_cells(nb: Path, root: Path = ROOT) -> tuple[str, str]:
    """The sources of a notebook's Colab button (markdown) and install cell (code, the first code cell)."""
    url, tag = release(root)
    button = (f"```{{button-link}} {colab_url(nb, root)}\n:color: primary\n:outline:\n\n"
              f"Open in Colab / Colab で開く\n```")
    install = f"""# On Colab or a fresh machine: install clipadapt at the book's release tag (nothing happens where it is installed).
# pip installs the versions pinned in the tag's pyproject.toml; the clone also brings data_scripts/.
import importlib, importlib.util, os, subprocess, sys
if importlib.util.find_spec("clipadapt") is None:
    if not os.path.isdir("clipadapt"):
        subprocess.run(["git", "clone", "--quiet", "--depth", "1", "--branch", "{tag}",
                        "{url}", "clipadapt"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "./clipadapt"], check=True)
    importlib.invalidate_caches()
    os.chdir("clipadapt")  # results/ and data_scripts/ are relative to the repository
    # the ci profile's tiny models: the tag's release assets, sha256-checked (built here when that fails: 12 minutes)
    subprocess.run([sys.executable, "data_scripts/build_ci_assets.py"], check=True)"""
    return button, install


def sync_colab(root: Path = ROOT) -> list[Path]:
    """Write (or refresh) the Colab button after the title and the install cell before the code of every notebook.

    Returns the notebooks that changed. The cells are found by their tags `colab-button` and `colab-install`.
    """
    import nbformat
    changed = []
    for path in notebooks(root):
        nb = nbformat.read(path, as_version=4)
        button, install = colab_cells(path, root)
        before = nbformat.writes(nb)
        nb.cells = [c for c in nb.cells if not {"colab-button", "colab-install"} & set(c.metadata.get("tags", []))]
        nb.cells[1:1] = [nbformat.v4.new_markdown_cell(button, id="colab-button", metadata={"tags": ["colab-button"]}),
                         nbformat.v4.new_code_cell(install, id="colab-install",
                                                   metadata={"tags": ["colab-install", "hide-input"]})]
        if nbformat.writes(nb) != before:
            nbformat.write(nb, path)
            changed.append(path)
    return changed


# ---------------------------------------------------------------- bilingual parity

def _markdown_sources(root: Path = ROOT) -> list[tuple[str, str]]:
    out = [(str(p.relative_to(root)), p.read_text()) for p in sorted((root / "book").rglob("*.md"))]
    for nb in notebooks(root):
        cells = json.loads(nb.read_text())["cells"]
        for i, c in enumerate(cells):
            if c["cell_type"] == "markdown":
                out.append((f"{nb.relative_to(root)} cell {i}", "".join(c["source"])))
    return out


def parity_errors(name: str, text: str) -> list[str]:
    """Problems with the bilingual convention in one markdown source.

    Convention: headings carry both languages ("Title / 題名"); all prose sits in a `tab-set` with
    `:sync-group: lang` holding exactly one `:sync: en` and one `:sync: ja` item, both non-empty, the Japanese one in
    Japanese. Directives outside tab-sets (figures, glue, code) are allowed, prose is not.
    """
    errs: list[str] = []
    lines = text.splitlines()
    i, depth_fence = 0, None
    while i < len(lines):
        line = lines[i]
        s = line.strip()
        if s.startswith("#") and re.match(r"^#{1,6} ", s):
            if not (JA.search(s) and re.search(r"[A-Za-z]", s)):
                errs.append(f"{name}: heading without both languages: {s!r}")
        elif re.match(r"^:{3,}\{tab-set\}", s):
            fence = re.match(r"^(:{3,})", s).group(1)
            j = i + 1
            while j < len(lines) and lines[j].strip() != fence:
                j += 1
            errs += _check_tabset(name, lines[i + 1:j])
            i = j
        elif re.match(r"^(:{3,}|`{3,})", s):  # another directive or code block: skip to its closing fence
            fence = re.match(r"^(:{3,}|`{3,})", s).group(1)
            j = i + 1
            while j < len(lines) and lines[j].strip() != fence:
                j += 1
            i = j
        elif s and not s.startswith(("<!--", "(", "+++", "---", "{glue", "!", "|")) and not re.match(r"^[a-z_]+:", s):
            if depth_fence is None and (JA.search(s) or re.search(r"[A-Za-z]{3,}", s)):
                errs.append(f"{name}: prose outside a language tab-set: {s[:60]!r}")
        i += 1
    return errs


def _check_tabset(name: str, body: list[str]) -> list[str]:
    if not any(re.match(r"^:sync-group:\s*lang\s*$", b.strip()) for b in body[:3]):
        return [f"{name}: tab-set without ':sync-group: lang'"]
    items: dict[str, list[str]] = {}
    current = None
    for b in body:
        s = b.strip()
        if re.match(r"^:{3,}\{tab-item\}", s):
            current = "?"
            continue
        m = re.match(r"^:sync:\s*(\w+)", s)
        if m and current == "?":
            current = m.group(1)
            items[current] = []
            continue
        if current and current != "?" and not re.match(r"^:{3,}$", s):
            items[current].append(s)
    errs = []
    if sorted(items) != ["en", "ja"]:
        errs.append(f"{name}: tab-set needs exactly one 'en' and one 'ja' item, found {sorted(items)}")
    en, ja = " ".join(items.get("en", [])).strip(), " ".join(items.get("ja", [])).strip()
    if "en" in items and not en:
        errs.append(f"{name}: empty English tab")
    if "ja" in items and not JA.search(ja):
        errs.append(f"{name}: the Japanese tab has no Japanese text")
    if en and len(JA.findall(en)) > 0.2 * len(en):
        errs.append(f"{name}: the English tab is mostly Japanese")
    return errs


def check_parity(root: Path = ROOT) -> list[str]:
    errs: list[str] = []
    for name, text in _markdown_sources(root):
        errs += parity_errors(name, text)
    return errs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m clipadapt.book", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="run all notebooks on a profile and build the HTML book")
    b.add_argument("--profile", default="ci")
    b.add_argument("--no-run", action="store_true", help="reuse the notebooks already executed in _build/site")
    r = sub.add_parser("run", help="run one notebook with papermill")
    r.add_argument("notebook")
    r.add_argument("--profile", default="ci")
    sub.add_parser("check", help="check that every page and section has English and Japanese, and that the Japanese "
                                 "uses the glossary's preferred terms")
    sub.add_parser("slides", help="rebuild the training decks from the notebooks the last book build ran")
    sub.add_parser("colab", help="write the Colab button and install cell (release tag from _config.yml) into every notebook")
    a = ap.parse_args(argv)
    if a.cmd == "build":
        build(a.profile, run=not a.no_run)
    elif a.cmd == "run":
        run_notebook(Path(a.notebook), a.profile)
    elif a.cmd == "slides":
        print("\n".join(f"wrote {p}" for p in build_slides()))
    elif a.cmd == "colab":
        print("\n".join(f"updated {p.name}" for p in sync_colab()) or "every notebook is up to date")
    else:
        from .terms import term_errors
        errs = check_parity() + term_errors(ROOT)
        print("\n".join(errs) or "every page and section has English and Japanese, and the glossary's terms")
        sys.exit(1 if errs else 0)


if __name__ == "__main__":
    main()
