"""The book's Japanese terms: one term per concept, with the glossary as the single source.

The Japanese tab of `book/glossary.md` ends with a table `| 使う表記 | 使わない表記 | 英語 |`: the preferred term
(its headword and, in brackets, the aliases a reader searches for), the variants the book does not use, and the
English. `term_errors` reads that table and finds every variant in the Japanese text of the book: the Japanese tabs
and heading halves of every page and notebook, and the Japanese strings of the package (glued verdicts, reports).
A variant inside the preferred term itself (活性 in 活性値) or right after it in brackets (重み減衰(weight decay))
is not an error. A row with no variants (—) asks for its alias on every page that uses the term: a page that says
微調整 also says ファインチューニング once (微調整(ファインチューニング), or フルファインチューニング), the word readers search for.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .layout import notebooks

HEADER = ("使う表記", "使わない表記", "英語")
GLOSSARY = Path("book") / "glossary.md"
JA = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


@dataclass(frozen=True)
class Term:
    preferred: str           # as written in the table, e.g. 活性値(アクティベーション)
    forms: tuple[str, ...]   # the headword and its aliases, e.g. (活性値, アクティベーション)
    variants: tuple[str, ...]
    english: str


def read_table(glossary_text: str) -> list[Term]:
    """The terms table of the glossary page; an error (what to do) when it is missing or a row is malformed."""
    lines = glossary_text.splitlines()
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines if ln.strip().startswith("|")]
    try:
        start = next(i for i, row in enumerate(cells) if tuple(row) == HEADER)
    except StopIteration:
        raise ValueError(f"{GLOSSARY}: no terms table with the header | {' | '.join(HEADER)} | in its Japanese tab; "
                         "it is the book's single source of preferred terms, add it back") from None
    terms = []
    for row in cells[start + 2:]:
        if len(row) != 3 or not row[0]:
            raise ValueError(f"{GLOSSARY}: terms table row {row!r} needs 3 cells: preferred | variants (、) | English")
        forms = tuple(f.strip() for f in re.split(r"[()()、]", row[0]) if f.strip())
        variants = tuple(v.strip() for v in row[1].split("、") if v.strip() and v.strip() != "—")
        terms.append(Term(row[0], forms, variants, row[2]))
    if not terms:
        raise ValueError(f"{GLOSSARY}: the terms table has no rows")
    return terms


def japanese_text(markdown: str) -> str:
    """The Japanese of one markdown source: the bodies of its `:sync: ja` tab items and the Japanese halves of its
    headings ("Title / 題名")."""
    out, inside, fence = [], False, None
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        s = line.strip()
        if not inside:
            if re.match(r"^:{3,}\{tab-item\}", s) and i + 1 < len(lines) and re.match(r"^:sync:\s*ja\b", lines[i + 1].strip()):
                inside, fence = True, re.match(r"^(:{3,})", s).group(1)
            elif re.match(r"^#{1,6} ", s) and " / " in s:
                out.append(s.split(" / ", 1)[1])
        elif s == fence:
            inside = False
        elif not s.startswith(":sync:"):
            out.append(line)
    return "\n".join(out)


def _allowed(text: str, start: int, end: int, term: Term) -> bool:
    for form in (*term.forms, term.preferred):
        for m in re.finditer(re.escape(form), text[max(0, start - len(form)):end + len(form)]):
            a = max(0, start - len(form)) + m.start()
            if a <= start and end <= a + len(form):
                return True  # inside the preferred term (活性 in 活性値)
        if re.search(re.escape(form) + r"[((]$", text[max(0, start - len(form) - 1):start]):
            return True      # the English or an alias in brackets right after the preferred term
    return False


def variant_errors(name: str, text: str, terms: list[Term], gloss: bool = True) -> list[str]:
    """Every variant in `text` (Japanese text of one page), and with `gloss`, a missing first-use gloss."""
    flat = re.sub(r"[ \t]*\n[ \t]*", "", text)  # wrapped lines: a term may be split across them
    errs = []
    for term in terms:
        found = [(m.start(), m.end(), v) for v in term.variants for m in re.finditer(re.escape(v), flat)
                 if not _allowed(flat, m.start(), m.end(), term)]
        for a, b, v in found:
            if any(a2 <= a and b <= b2 and b2 - a2 > b - a for a2, b2, _ in found):
                continue  # 活性 inside 活性化: the longer variant is the one to report
            ctx = flat[max(0, a - 12):b + 12]
            errs.append(f"{name}: 「{v}」 → 「{term.forms[0]}」 (…{ctx}…; see the glossary's 表記の統一)")
        if gloss and not term.variants and len(term.forms) > 1 and term.forms[0] in flat and term.forms[1] not in flat:
            errs.append(f"{name}: uses 「{term.forms[0]}」 but never 「{term.forms[1]}」, the word readers search for: "
                        f"write 「{term.preferred}」 once")
    return errs


def _pages(root: Path) -> list[tuple[str, str]]:
    pages = [(str(p.relative_to(root)), p.read_text()) for p in sorted((root / "book").rglob("*.md"))
             if p.relative_to(root) != GLOSSARY]
    for nb in notebooks(root):
        cells = json.loads(nb.read_text())["cells"]
        pages.append((str(nb.relative_to(root)),
                      "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")))
    return pages


def term_errors(root: Path) -> list[str]:
    """Every non-preferred Japanese term in the book and in the package's Japanese strings."""
    if not (root / GLOSSARY).exists():
        raise FileNotFoundError(f"no {GLOSSARY} under {root}: the terms check reads its 表記の統一 table; run it from the "
                                "repository's folder or set CLIPADAPT_ROOT to it")
    terms = read_table((root / GLOSSARY).read_text())
    errs = []
    for name, text in _pages(root):
        errs += variant_errors(name, japanese_text(text), terms)
    japanese_variants = [t for t in terms if any(JA.search(v) for v in t.variants)]
    for py in sorted((root / "src" / "clipadapt").rglob("*.py")):
        if py.name == "terms.py":
            continue
        strings = "\n".join(s for s in re.findall(r'"([^"\n]*)"', py.read_text()) if JA.search(s))
        only_ja = [Term(t.preferred, t.forms, tuple(v for v in t.variants if JA.search(v)), t.english)
                   for t in japanese_variants]
        errs += variant_errors(str(py.relative_to(root)), strings, only_ja, gloss=False)
    return errs
