"""The tiny models as release assets: packed by `data_scripts/release_assets.py` (`make release-assets`), fetched from
this version's release before anything builds them, so a fresh machine (Colab) starts in a minute instead of 12.

An asset is a plain tar of files under the cache folder, with sorted names and fixed times, owners and modes (the
same cache gives the same bytes), listed with its sha256 in `SHA256SUMS` beside it (`sha256sum -c` reads it):

    tiny-clip.tar      tiny-clip/<checkpoint>.history.json, .pt, .sha256   (models.pretrain.clip_asset)
    tiny-vl-bart.tar   tiny-vl-bart/<key>/: model, tokenizer, visual.pt, history.json, files.sha256, and a copy of
                       the tiny CLIP's .sha256 it was trained on under requires/   (models.seq2seq.lm_asset)
    SHA256SUMS

Where from: `$CLIPADAPT_ASSETS_URL` (the folder URL; `none` turns fetching off), else the GitHub release of the
installed version. Nothing is fetched with HF_HUB_OFFLINE=1 (the Makefile, the tests and the ci profile set it).
A fetched asset is verified against SHA256SUMS, unpacked into a scratch folder in the cache, checked as the loaders
check it, and only then moved into place (os.replace); anything short of that leaves the cache as it was and says in
one line why, and the caller builds the model instead.
"""
from __future__ import annotations

import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

from ..utils import ChecksumError, atomic_write, cache_dir, download, file_digest, hub_offline

REPO = "https://github.com/clipadapt/clipadapt"   # _config.yml's repository.url (a test keeps them equal)
ENV = "CLIPADAPT_ASSETS_URL"
SUMS = "SHA256SUMS"
TIMEOUT = 5.0        # seconds for a connection and for each read: an unreachable server must not hold a build up
MTIME = 1_767_225_600   # 2026-01-01, the time of every file in an asset


@dataclass(frozen=True)
class Asset:
    name: str                         # the release file, e.g. "tiny-clip.tar"
    what: str                         # for messages, e.g. "the tiny CLIP"
    paths: tuple[str, ...]            # what it installs, relative to the cache folder, in this order (a folder whole)
    check: Callable[[Path], object]   # checks a copy unpacked under a root as the loaders do (raises ChecksumError)
    requires: tuple[str, ...] = field(default=())   # cache files that must equal the packer's (what it was built on)


def base_url() -> str | None:
    """Where the assets are: $CLIPADAPT_ASSETS_URL, else this version's GitHub release; None when it is `none`."""
    url = os.environ.get(ENV, "").strip()
    if url.lower() == "none":
        return None
    return url.rstrip("/") if url else f"{REPO}/releases/download/v{version('clipadapt')}"


def _files(asset: Asset, root: Path) -> list[tuple[str, Path]]:
    """(name in the tar, file) for each file of `asset` in the cache folder `root`, sorted by name."""
    out = [(f"requires/{rel}", root / rel) for rel in asset.requires]
    for rel in asset.paths:
        p = root / rel
        if p.is_dir():
            out += [(f.relative_to(root).as_posix(), f) for f in p.rglob("*")
                    if f.is_file() and not f.name.startswith(".")]
        else:
            out.append((rel, p))
    missing = [str(p) for _, p in out if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{asset.what} is not complete in the cache ({', '.join(missing)} missing): build it "
                                "first with\n    python data_scripts/build_ci_assets.py")
    return sorted(out)


def pack(asset: Asset, out_dir: Path, root: Path | None = None) -> Path:
    """Write `asset` from the cache folder `root` (default: the cache) as `out_dir/<name>`, a deterministic tar; a
    damaged build is refused (its sha256 check runs first; a build from before digests records its digest)."""
    root = Path(root) if root is not None else cache_dir()
    asset.check(root)
    files = _files(asset, root)

    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
            for name, path in files:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = path.stat().st_size, MTIME, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(path, "rb") as f:
                    tar.addfile(info, f)
    out = Path(out_dir) / asset.name
    atomic_write(out, write)
    return out


def write_sums(out_dir: Path, names: list[str]) -> Path:
    """`out_dir/SHA256SUMS`: a `sha256sum` line for each of the files `names` in `out_dir`."""
    text = "".join(f"{file_digest(Path(out_dir) / n)}  {n}\n" for n in sorted(names))
    atomic_write(Path(out_dir) / SUMS, lambda p: p.write_text(text))
    return Path(out_dir) / SUMS


def _unreached(e: Exception, url: str) -> str:
    """Why `url` did not come: an HTTP status (404: the release has no such file) or the network's reason."""
    http = e if isinstance(e, urllib.error.HTTPError) else e.__cause__
    folder, name = url.rsplit("/", 1)
    if isinstance(http, urllib.error.HTTPError):
        return f"no asset for this version: {folder} has no {name} (HTTP {http.code})"
    return f"offline or {folder} unreachable: {getattr(e, 'reason', None) or e}"


def _sums(path: Path) -> dict[str, str]:
    """{file name: sha256} from a `sha256sum` listing; {} when it is not one."""
    out = {}
    for line in path.read_text(errors="replace").splitlines():
        digest, _, name = line.strip().partition(" ")
        if len(digest) != 64 or not name.strip():
            return {}
        out[name.strip().lstrip("*")] = digest.lower()
    return out


def _unpack(tar_path: Path, asset: Asset, dest: Path) -> str | None:
    """Unpack into `dest` when the tar holds exactly the asset's paths (and requires/); else why not."""
    allowed = asset.paths + tuple(f"requires/{r}" for r in asset.requires)
    try:
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
            names = sorted(m.name for m in members if m.isfile())
            stray = [m.name for m in members if not m.isfile() or ".." in m.name.split("/")
                     or not any(m.name == a or m.name.startswith(a + "/") for a in allowed)]
            missing = [a for a in allowed if not any(n == a or n.startswith(a + "/") for n in names)]
            if stray or missing:
                return (f"{asset.name} holds {', '.join(names[:4]) or 'nothing'}, not {', '.join(missing or stray)}: "
                        "it was packed for another version of the recipe")
            tar.extractall(dest, filter="data")
    except tarfile.TarError as e:
        return f"{asset.name} is not a readable tar ({e})"
    for f in dest.rglob("*"):
        os.utime(f)   # the install time, not the asset's fixed one (the loaders key their caches on mtimes)
    return None


def _install(asset: Asset, staged: Path, root: Path, scratch: Path) -> None:
    """Move the checked files from `staged` into the cache `root` in the asset's order (the last one marks the model
    complete, so a stale one goes first); a folder moves whole."""
    last = root / asset.paths[-1]
    if last.is_file():
        last.unlink()
    for rel in asset.paths:
        src, dst = staged / rel, root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir() and dst.exists():   # an incomplete folder in the way goes to the scratch folder
            os.replace(dst, scratch / f"old-{dst.name}")
        os.replace(src, dst)


def fetch(asset: Asset, offline: bool | None = None, url: str | None = None) -> bool:
    """Put `asset` from the release (`url`, default `base_url()`) into the cache: True when it is there, verified;
    False, with one line on stderr saying why (offline, no asset for this version, a checksum mismatch, another
    recipe), when the cache was left as it was and the caller should build it. `offline` overrides HF_HUB_OFFLINE."""
    def fallback(why: str) -> bool:
        print(f"{asset.what}: not fetched from the release ({why}); building it here instead", file=sys.stderr)
        return False

    if hub_offline() if offline is None else offline:
        return fallback("offline: HF_HUB_OFFLINE=1")
    try:
        base = (url or base_url() or "").rstrip("/")
    except PackageNotFoundError:
        return fallback(f"clipadapt is not installed, so its release is unknown: set {ENV}")
    if not base:
        return fallback(f"{ENV}=none")
    root = cache_dir()
    scratch = Path(tempfile.mkdtemp(dir=root, prefix=".fetch-"))
    try:
        where = f"{base}/{SUMS}"
        try:
            sums = _sums(download(where, scratch / SUMS, timeout=TIMEOUT))
            if asset.name not in sums:
                return fallback(f"no asset for this version: {where} lists no {asset.name}")
            where = f"{base}/{asset.name}"
            tar = download(where, scratch / asset.name, f"sha256:{sums[asset.name]}", timeout=TIMEOUT)
        except ChecksumError:
            return fallback(f"checksum mismatch: {where} does not have the sha256 {sums[asset.name][:12]}... that "
                            f"{SUMS} gives; refused")
        except (OSError, http.client.HTTPException) as e:
            return fallback(_unreached(e, where))
        why = _unpack(tar, asset, scratch / "files")
        if why:
            return fallback(why)
        try:
            asset.check(scratch / "files")
        except ChecksumError as e:
            return fallback(f"checksum mismatch inside {asset.name}: {str(e).splitlines()[0]}; refused")
        for rel in asset.requires:
            mine, packed = root / rel, scratch / "files" / "requires" / rel
            if not mine.is_file() or mine.read_text().strip() != packed.read_text().strip():
                return fallback(f"it was built on another model than the one in {root}: {rel} differs")
        _install(asset, scratch / "files", root, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{asset.what}: fetched {asset.name} from {base} (sha256 verified) into {root}", file=sys.stderr)
    return True
