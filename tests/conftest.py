import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CLIPADAPT_PAPER_ON_CPU", "1")   # the paper code paths run here on stand-ins, on the CPU

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    """The cached tiny CLIP (built by `make assets`; built here when missing)."""
    from clipadapt.models import TINY_NAME, TINY_TAG, load_clip
    from clipadapt.models.pretrain import ensure_tiny_clip
    ensure_tiny_clip(show_progress=False)
    return load_clip(TINY_NAME, TINY_TAG)


@pytest.fixture(scope="session")
def ci_chapters(tiny):
    """Every chapter's ci run computed once, side by side (`chapters.prepare`); the tests and notebooks read them."""
    from clipadapt import chapters
    chapters.prepare("ci")


@pytest.fixture(scope="session")
def built_book(ci_chapters):
    """Every notebook run by papermill on ci and the HTML book built (the slow tests share one build)."""
    from clipadapt import book
    return book.build("ci")
