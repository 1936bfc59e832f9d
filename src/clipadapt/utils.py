"""Seeding, the cache folder, progress bars and downloads, shared by every module and data script."""
from __future__ import annotations

import json
import os
import random
import sys
import urllib.error
import urllib.request
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a run with the same seed gives the same numbers on the same machine."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def spawn_seeds(root: int, n: int, stream: str | None = None) -> list[int]:
    """`n` independent seeds drawn from a set-up's seed `root`, the one source of seeds: the children of numpy's
    `SeedSequence(root)` (the runs), or of `SeedSequence([root, crc32(stream)])` for a named stream such as
    "test split" (data that must not share a seed with the runs or with another stream). Each seed is its child's
    first 32-bit state word."""
    entropy = root if stream is None else [root, zlib.crc32(stream.encode())]
    return [int(child.generate_state(1)[0]) for child in np.random.SeedSequence(entropy).spawn(n)]


@contextmanager
def torch_threads(n: int | None):
    """Run the block on `n` CPU threads (None: leave torch's setting); the previous setting comes back after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cache_dir() -> Path:
    """The folder for generated assets and weights: $CLIPADAPT_CACHE, else ~/.cache/clipadapt."""
    p = Path(os.environ.get("CLIPADAPT_CACHE", Path.home() / ".cache" / "clipadapt")).expanduser()
    if p.exists() and not p.is_dir():
        raise NotADirectoryError(f"the cache folder {p} is a file; set CLIPADAPT_CACHE to a folder (it is created "
                                 "when missing) or unset it to use ~/.cache/clipadapt")
    p.mkdir(parents=True, exist_ok=True)
    return p


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is set true: no model hub or release download is tried (ci, the Makefile, tests)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


class BrokenFileError(ValueError):
    """A record, cache or data file that cannot be read (cut short, empty, another format); names the file."""


def read_json(path: Path, fix: str) -> Any:
    """The JSON in `path`; a file that does not parse is a `BrokenFileError` naming it and saying `fix`."""
    text = Path(path).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        what = "is empty" if not text.strip() else f"is not valid JSON ({e.msg}, line {e.lineno} column {e.colno})"
        raise BrokenFileError(f"{path} {what}: it was probably cut short while written. {fix}") from e


def read_npy(path: Path, fix: str, mmap_mode: str | None = None) -> np.ndarray:
    """The array in a .npy file (no pickled objects); an unreadable file is a `BrokenFileError` saying `fix`."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise BrokenFileError(f"{path} cannot be read as a NumPy array ({type(e).__name__}: {e}). {fix}") from e


def atomic_write(path: Path, write) -> None:
    """`write(tmp_path)`, then rename onto `path`: a reader never sees a half-written file."""
    import tempfile
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp's file is private; the result is an ordinary file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def progress(iterable=None, **kw):
    """tqdm that works in notebooks and terminals; pass `disable=True` to silence (`TQDM_DISABLE=1` silences all:
    the book build sets it in the worker processes that run chapters side by side, whose bars would interleave)."""
    kw["disable"] = kw.get("disable", False) or os.environ.get("TQDM_DISABLE") == "1"
    kw.setdefault("dynamic_ncols", True)
    kw.setdefault("mininterval", 1.0 if sys.stderr.isatty() else 15.0)   # a log (CI, papermill): few redraws
    return tqdm(iterable, **kw)


class ChecksumError(RuntimeError):
    """A downloaded or existing file does not have the checksum its source publishes."""


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    import hashlib
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, checksum: str) -> None:
    """Check `path` against "md5:<hex>" or "sha256:<hex>"; a mismatch moves it to `<name>.corrupt` and raises."""
    algorithm, _, expected = checksum.partition(":")
    got = file_digest(path, algorithm)
    if got != expected.lower():
        bad = path.with_name(path.name + ".corrupt")
        path.replace(bad)
        raise ChecksumError(f"{path.name}: {algorithm} is {got}, the source publishes {expected}. The file was moved "
                            f"to {bad}; run the same command again to download it anew (delete {bad} when done).")


class DownloadError(ConnectionError):
    """A server that could not be reached; the message names the URL, the reason and `hint`, the offline route."""

    def __init__(self, url: str, reason, hint: str):
        self.url, self.reason, self.hint = url, reason, hint
        super().__init__(f"could not download {url} ({reason}). Check the network and run the same command again; "
                         f"without a network, {hint}")


@contextmanager
def reaching(url: str, hint: str):
    """Run the block that fetches `url`; no network, a failed name lookup, a refused connection, a timeout or an HTTP
    error becomes a DownloadError that ends with `hint`, how to get the file without a network."""
    try:
        yield
    except (urllib.error.URLError, TimeoutError) as e:
        reason = e.reason if type(e) is urllib.error.URLError else e
        raise DownloadError(url, reason, hint) from e


def download(url: str, dest: Path, checksum: str | None = None, timeout: float = 60, hint: str | None = None) -> Path:
    """Download `url` to `dest` with a progress bar; resumable, and verified when the source publishes a checksum.

    The bytes go to `<dest>.part`; a run interrupted there resumes with an HTTP Range request (servers that ignore it
    send the whole file, which restarts it). `checksum` ("md5:<hex>" or "sha256:<hex>") is checked on the finished
    file and on a `dest` that already exists, so a shared data root can be prepared once and re-checked. A server
    that cannot be reached raises DownloadError with `hint`, the offline route (default: put a copy at `dest`).
    """
    dest = Path(dest)
    hint = hint or f"download the file on a machine with internet and put it at {dest}."
    if not dest.exists():
        tmp = dest.with_name(dest.name + ".part")
        done = tmp.stat().st_size if tmp.exists() else 0
        req = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
        with reaching(url, hint), urllib.request.urlopen(req, timeout=timeout) as r:
            resumed = done and r.status == 206
            done = done if resumed else 0
            length = int(r.headers.get("Content-Length", 0))
            with open(tmp, "ab" if resumed else "wb") as f, \
                    progress(total=(done + length) or None, initial=done, unit="B", unit_scale=True,
                             desc=dest.name) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        if length and tmp.stat().st_size != done + length:
            raise ConnectionError(f"{dest.name}: the connection ended after {tmp.stat().st_size} of {done + length} "
                                  f"bytes; run the same command again to resume")
        tmp.replace(dest)
    if checksum:
        verify(dest, checksum)
    return dest
