"""The built book in a real browser: Debian's Chromium (headless, `make browser` installs it) driven by Playwright.

Every page loads without console errors, every chapter shows its figures, no Japanese tab shows a blank between
two CJK characters, the language switch shows the other
language and keeps it across pages, search finds terms in both languages, and no internal link is broken. The
report of an own-images run (`clipadapt adapt`) opens on its own with its figures and its language switch.
Screenshots of the intro and a chapter in each language are saved to _build/screenshots/ as build artefacts.
The machine has no internet: requests to other hosts are answered with an empty body and must be to known hosts.
"""
import functools
import http.server
import re
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest
from test_adapt import messy, run  # noqa: F401 (an own-images run on a messy folder, and that folder)

from clipadapt import book
from clipadapt.sphinxext import CJK

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# the flags the workplace's browser checks use: no sandbox as root, no background connections to a closed network
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
EXTERNAL_OK = {"cdn.jsdelivr.net"}  # MathJax, loaded from its CDN by jupyter-book's default configuration
SHOTS = book.ROOT / "_build" / "screenshots"
# the text of every paragraph-like block of the Japanese tabs, code and maths as a Latin letter (a blank next to
# code is wanted)
JA_BLOCKS = """() => [...document.querySelectorAll('label.sd-tab-label[data-sync-id=ja]')].flatMap(l =>
    [...l.nextElementSibling.querySelectorAll('p, dt, td, th, figcaption')].map(b => {
        const c = b.cloneNode(true);
        c.querySelectorAll('pre, code, .math, mjx-container, script').forEach(e => e.replaceWith('x'));
        return c.textContent; }))"""
CJK_GAP = re.compile(f"[{CJK}]\\s+[{CJK}]")


def pages(html: Path) -> list[Path]:
    return sorted(p for p in html.rglob("*.html") if not {"_static", "_sources", "_images"} & set(p.parts))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(built_book):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=built_book))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium fonts-ipafont-gothic)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield b
        b.close()


class Visit:
    """A fresh browser context (empty storage) that records console errors, failed loads and outside hosts."""

    def __init__(self, browser, base: str):
        self.base, self.errors, self.hosts = base, [], set()
        self.ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        self.ctx.route("**/*", self._route)
        self.page = self.ctx.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"{self.page.url}: {m.text}"))
        self.page.on("pageerror", lambda e: self.errors.append(f"{self.page.url}: {e}"))
        self.page.on("response", lambda r: r.status >= 400 and self.errors.append(f"{r.url}: HTTP {r.status}"))

    def _route(self, route):
        url = route.request.url
        if url.startswith(self.base):
            return route.continue_()
        self.hosts.add(urlsplit(url).hostname)
        return route.fulfill(status=200, body="", content_type="application/javascript")

    def open(self, rel: str):
        self.page.goto(self.base + rel, wait_until="load")
        return self.page

    def lang_shown(self) -> set[str]:
        """The languages of the tab-sets of the `lang` group that are selected on the current page."""
        return set(self.page.evaluate("""() => [...document.querySelectorAll('label.sd-tab-label[data-sync-group=lang]')]
            .filter(l => document.getElementById(l.htmlFor).checked).map(l => l.dataset.syncId)"""))


def test_every_page_loads_without_console_errors_shows_its_figures_and_no_blank_between_japanese_characters(
        site, browser, built_book):
    v = Visit(browser, site)
    figures, gaps = {}, []
    for p in pages(built_book):
        rel = p.relative_to(built_book).as_posix()
        page = v.open(rel)
        page.wait_for_load_state("networkidle")
        imgs = page.evaluate("() => [...document.querySelectorAll('article img')].map(i => [i.src, i.naturalWidth])")
        broken = [src for src, w in imgs if w == 0]
        assert not broken, f"{rel}: images that did not load: {broken}"
        figures[rel] = len(imgs)
        gaps += [f"{rel}: …{t[max(0, m.start() - 10):m.end() + 10]!r}…" for t in page.evaluate(JA_BLOCKS)
                 for m in CJK_GAP.finditer(t)]
    v.ctx.close()
    assert not gaps, f"{len(gaps)} blanks between two CJK characters in Japanese tabs (Chromium shows them):\n" + \
        "\n".join(gaps[:30])
    assert not v.errors, "browser console errors:\n" + "\n".join(v.errors)
    assert v.hosts <= EXTERNAL_OK, f"pages ask other hosts than {EXTERNAL_OK}: {v.hosts - EXTERNAL_OK}"
    chapters = [nb.stem for nb in book.notebooks() if not nb.stem.startswith("9")]
    for stem in chapters:
        assert figures[f"notebooks/{stem}.html"] >= 3, f"{stem}: only {figures[f'notebooks/{stem}.html']} figures"
    assert figures["notebooks/90_reproduction.html"] >= 1


def test_language_switch_shows_japanese_and_keeps_it_across_pages(site, browser):
    v = Visit(browser, site)
    page = v.open("book/intro.html")
    assert v.lang_shown() == {"en"}, "a first visit should show English"
    assert page.get_by_text("This book reproduces five papers").is_visible()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / "intro_en.png")
    page.locator("label.sd-tab-label[data-sync-id=ja]").first.click()
    assert v.lang_shown() == {"ja"}, "clicking 日本語 should switch every tab-set of the page"
    assert page.get_by_text("本書は、CLIP 型の視覚・言語モデル").is_visible()
    assert not page.get_by_text("This book reproduces five papers").is_visible()
    page.screenshot(path=SHOTS / "intro_ja.png")
    page = v.open("notebooks/04_batclip.html")   # a new page load: the choice must come back from storage
    assert v.lang_shown() == {"ja"}, "the Japanese choice was not kept on the next page"
    page.screenshot(path=SHOTS / "chapter_ja.png")
    page.locator("label.sd-tab-label[data-sync-id=en]").first.click()
    page.screenshot(path=SHOTS / "chapter_en.png")
    v.open("book/glossary.html")
    assert v.lang_shown() == {"en"}
    v.ctx.close()
    assert not v.errors, "\n".join(v.errors)
    assert all((SHOTS / f"{n}.png").stat().st_size > 10_000 for n in ("intro_en", "intro_ja", "chapter_en", "chapter_ja"))


@pytest.mark.parametrize("term, page", [("adapter", "notebooks/01_peclip.html"), ("アダプタ", "notebooks/01_peclip.html"),
                                        ("corruption", "notebooks/04_batclip.html"),
                                        ("感度", "notebooks/05_spt.html")])
def test_search_finds_terms_in_both_languages(site, browser, term, page):
    v = Visit(browser, site)
    p = v.open(f"search.html?q={term}")
    # Sphinx lists the hits one by one, then writes the summary: wait for the summary
    p.wait_for_function("() => /Search finished|did not match/.test("
                        "document.querySelector('#search-results .search-summary')?.innerText || '')", timeout=30_000)
    hits = p.evaluate("() => [...document.querySelectorAll('#search-results li a')].map(a => a.href)")
    v.ctx.close()
    assert any(page in h for h in hits), f"searching {term!r} did not find {page}: {hits}"


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        for key in ("href", "src"):
            if a.get(key) and not (tag == "link" and key == "href" and a.get("rel") in ("canonical",)):
                self.links.append(a[key])


def test_no_internal_link_is_broken(built_book):
    parsed = {}

    def parse(p: Path) -> _Links:
        if p not in parsed:
            parsed[p] = _Links()
            parsed[p].feed(p.read_text(errors="replace"))
        return parsed[p]

    broken = []
    for p in pages(built_book):
        for link in parse(p).links:
            if re.match(r"^[a-z][a-z0-9+.-]*:", link) or link.startswith("//"):
                continue  # another scheme or host (mailto:, https:, data:, javascript:)
            parts = urlsplit(urljoin(p.as_uri(), link))
            target = Path(unquote(parts.path))
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{p.relative_to(built_book)}: {link} (no such file)")
            elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in parse(target).ids:
                broken.append(f"{p.relative_to(built_book)}: {link} (no such anchor)")
    assert not broken, f"{len(broken)} broken internal links:\n" + "\n".join(broken[:40])


def test_chapters_launch_colab_at_the_release_tag(built_book):
    for nb in book.notebooks():
        html = (built_book / "notebooks" / f"{nb.stem}.html").read_text()
        assert book.colab_url(nb) in html, f"{nb.stem}: no Colab launch button/link at the release tag"


def test_chapters_link_their_terms_to_the_glossary_in_both_languages(built_book):
    glossary = (built_book / "book" / "glossary.html").read_text()
    for nb in book.notebooks():
        if nb.stem.startswith("9"):
            continue
        html = (built_book / "notebooks" / f"{nb.stem}.html").read_text()
        targets = set(re.findall(r'href="\.\./book/glossary\.html#(term-[^"]+)"', html))
        assert len(targets) >= 6, f"{nb.stem}: links only {sorted(targets)} to the glossary"
        assert all(f'id="{t}"' in glossary for t in targets)


def test_the_own_images_report_opens_with_its_figures_and_both_languages(browser, run):
    out, _ = run
    v = Visit(browser, out.as_uri() + "/")
    page = v.open("report.html")
    widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
    assert len(widths) >= 2 and min(widths) > 0, "the figures are embedded and decode"
    assert page.locator("section[lang=en]").is_visible() and not page.locator("section[lang=ja]").is_visible()
    page.click("text=日本語")
    assert page.locator("section[lang=ja]").is_visible() and not page.locator("section[lang=en]").is_visible()
    assert "推奨" in page.inner_text("section[lang=ja]") and page.evaluate("document.documentElement.lang") == "ja"
    assert not v.errors and not v.hosts, (v.errors, v.hosts)
