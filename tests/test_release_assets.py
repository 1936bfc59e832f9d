"""The tiny models as release assets: packed deterministically, fetched from a release (a local stand-in server) and
verified before anything builds them, refused when damaged, skipped offline; and the tiny VL-BART's own sha256."""
import functools
import hashlib
import http.server
import io
import json
import runpy
import shutil
import socket
import tarfile
import threading
from pathlib import Path

import pytest
import torch

from clipadapt import book
from clipadapt.models import pretrain, release, seq2seq
from clipadapt.utils import ChecksumError

SCRIPTS = Path(__file__).parents[1] / "data_scripts"


class Built(Exception):
    """A build started (the tests never train)."""


def fake_lm_files(folder: Path, seed: int = 0) -> None:
    """The files a tiny VL-BART folder holds, small."""
    g = torch.Generator().manual_seed(seed)
    torch.save({"feat.0.weight": torch.randn(4, 3, generator=g)}, folder / "visual.pt")
    (folder / "config.json").write_text(json.dumps({"d_model": 4}))
    (folder / "model.safetensors").write_bytes(torch.randn(64, generator=g).numpy().tobytes())
    (folder / "history.json").write_text(json.dumps({"step": [0], "denoise": [1.0]}))


def fake_build(root: Path, monkeypatch, seed: int = 0) -> None:
    """Both tiny models written into the cache `root` as the real builds write them (small stand-in weights)."""
    monkeypatch.setenv("CLIPADAPT_CACHE", str(root))
    g = torch.Generator().manual_seed(seed)
    pretrain.save_tiny_clip({"w": torch.randn(8, generator=g)}, {"loss": [1.0, 0.5]}, pretrain.tiny_checkpoint_path())
    seq2seq.save_tiny_lm(seq2seq.tiny_lm_dir(), functools.partial(fake_lm_files, seed=seed))


def pack_all(out: Path) -> Path:
    tars = [release.pack(a, out) for a in (pretrain.clip_asset(), seq2seq.lm_asset())]
    return release.write_sums(out, [t.name for t in tars])


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture
def built(tmp_path, monkeypatch):
    """A cache with both (stand-in) models, packed into tmp/assets/v as a release would hold them."""
    fake_build(tmp_path / "built", monkeypatch)
    pack_all(tmp_path / "assets" / "v")
    return tmp_path / "built"


@pytest.fixture
def server(tmp_path):
    """tmp/assets served over HTTP, as the release's download folder; `server.log` lists the paths asked for."""
    log = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, fmt, *args):
            log.append(self.path)

    (tmp_path / "assets").mkdir(exist_ok=True)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=tmp_path / "assets"))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.url, srv.log = f"http://127.0.0.1:{srv.server_port}/v", log
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def cache(built, server, tmp_path, monkeypatch):
    """An empty scratch cache (never the real one), the release at the stand-in server, the network 'on'
    (HF_HUB_OFFLINE unset), and any build an error."""
    monkeypatch.setenv("CLIPADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(release.ENV, server.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(pretrain, "pretrain_tiny_clip", lambda *a, **k: (_ for _ in ()).throw(Built("tiny CLIP")))
    monkeypatch.setattr(seq2seq, "pretrain_tiny_lm", lambda *a, **k: (_ for _ in ()).throw(Built("tiny VL-BART")))
    return tmp_path / "cache"


# ---- packing

def test_packing_the_same_cache_twice_gives_the_same_bytes_in_sha256sum_format(built, tmp_path):
    first = tmp_path / "assets" / "v"
    for f in built.rglob("*"):
        f.touch()   # other times on disk: the tars do not carry them
    second = pack_all(tmp_path / "again").parent
    assert files_under(first) == files_under(second) == ["SHA256SUMS", "tiny-clip.tar", "tiny-vl-bart.tar"]
    for name in files_under(first):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    lines = (first / "SHA256SUMS").read_text().splitlines()
    assert lines == [f"{hashlib.sha256((first / n).read_bytes()).hexdigest()}  {n}"
                     for n in ("tiny-clip.tar", "tiny-vl-bart.tar")]
    with tarfile.open(first / "tiny-vl-bart.tar") as tar:
        names = tar.getnames()
        assert names == sorted(names) and {(m.mtime, m.uid, m.uname, m.mode) for m in tar} == \
            {(release.MTIME, 0, "", 0o644)}
    lm = seq2seq.tiny_lm_dir().relative_to(built).as_posix()
    clip = pretrain.digest_path(pretrain.tiny_checkpoint_path()).relative_to(built).as_posix()
    assert set(names) == {f"requires/{clip}"} | {f"{lm}/{f}" for f in files_under(built / lm)}
    assert f"{lm}/{seq2seq.LM_DIGEST}" in names


def test_a_damaged_cache_is_not_packed(built, tmp_path, monkeypatch):
    visual = seq2seq.tiny_lm_dir() / "visual.pt"
    visual.write_bytes(visual.read_bytes()[:-10])
    with pytest.raises(ChecksumError, match="(?s)tiny VL-BART in .*build_ci_assets.py --force tiny-vl-bart"):
        release.pack(seq2seq.lm_asset(), tmp_path / "out")
    monkeypatch.setattr("sys.argv", ["release_assets.py", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="does not match the sha256 recorded"):
        runpy.run_path(str(SCRIPTS / "release_assets.py"), run_name="__main__")
    assert not (tmp_path / "out" / "tiny-vl-bart.tar").exists()


# ---- fetching

def test_both_models_are_fetched_verified_where_the_loaders_look(cache, built, capsys):
    path = pretrain.ensure_tiny_clip(show_progress=False)       # no build: pretrain_tiny_clip raises
    lm = seq2seq.ensure_tiny_lm(show_progress=False)
    assert path == pretrain.tiny_checkpoint_path() and path.is_relative_to(cache)
    assert lm == seq2seq.tiny_lm_dir() and lm.is_relative_to(cache)
    assert files_under(cache) == files_under(built)               # nothing else: no scratch folder left
    for f in files_under(built):
        assert (cache / f).read_bytes() == (built / f).read_bytes(), f
    assert pretrain.check_tiny_checkpoint(path) == (built / path.relative_to(cache)).with_suffix(".sha256").read_text()
    seq2seq.check_tiny_lm(lm)
    err = capsys.readouterr().err
    assert "the tiny CLIP: fetched tiny-clip.tar from http://127.0.0.1" in err and "tiny-vl-bart.tar" in err
    assert not list(cache.glob(".fetch-*"))


@pytest.mark.parametrize("where", ["in transfer", "inside the tar"])
def test_a_tampered_asset_is_refused_and_the_cache_left_as_it_was(cache, tmp_path, capsys, where):
    tar = tmp_path / "assets" / "v" / "tiny-clip.tar"
    if where == "in transfer":   # the bytes served are not the ones SHA256SUMS lists
        data = bytearray(tar.read_bytes())
        data[2000] ^= 0xFF
        tar.write_bytes(bytes(data))
    else:                        # a tar listed correctly whose weights are not those their .sha256 records
        buf = io.BytesIO()
        with tarfile.open(tar) as src, tarfile.open(fileobj=buf, mode="w") as dst:
            for m in src:
                body = src.extractfile(m).read()
                if m.name.endswith(".pt"):
                    body = body[:-40] + bytes(b ^ 0xFF for b in body[-40:])
                dst.addfile(m, io.BytesIO(body))
        tar.write_bytes(buf.getvalue())
        release.write_sums(tar.parent, ["tiny-clip.tar", "tiny-vl-bart.tar"])
    assert release.fetch(pretrain.clip_asset()) is False
    err = capsys.readouterr().err
    if where == "in transfer":
        assert "not fetched from the release (checksum mismatch: http://127.0.0.1" in err
        assert "does not have the sha256" in err and "that SHA256SUMS gives; refused" in err
    else:
        assert "(checksum mismatch inside tiny-clip.tar: the tiny CLIP at" in err and "does not match" in err
    assert "building it here instead" in err
    assert files_under(cache) == [] and list(cache.iterdir()) == []   # nothing half-written, no scratch folder
    with pytest.raises(Built):
        pretrain.ensure_tiny_clip(show_progress=False)              # and the caller builds


def test_an_unreachable_server_falls_back_at_once_with_a_short_timeout(cache, monkeypatch, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]   # closed: connections are refused
    monkeypatch.setenv(release.ENV, f"http://127.0.0.1:{port}/v")
    timeouts = []

    def download(*args, **kwargs):
        timeouts.append(kwargs.get("timeout"))
        return real(*args, **kwargs)
    real = release.download
    monkeypatch.setattr(release, "download", download)
    assert release.fetch(pretrain.clip_asset()) is False
    err = capsys.readouterr().err
    assert f"(offline or http://127.0.0.1:{port}/v unreachable: " in err and "refused" in err.lower()
    assert timeouts == [release.TIMEOUT] and release.TIMEOUT <= 10
    assert list(cache.iterdir()) == []


def test_a_release_without_the_assets_says_there_is_none_for_this_version(cache, server, tmp_path, monkeypatch,
                                                                           capsys):
    monkeypatch.setenv(release.ENV, server.url.replace("/v", "/v0.0.0"))   # a tag with no release assets
    assert release.fetch(pretrain.clip_asset()) is False
    assert f"(no asset for this version: {server.url}0.0.0 has no SHA256SUMS (HTTP 404))" in capsys.readouterr().err
    sums = tmp_path / "assets" / "v" / "SHA256SUMS"
    sums.write_text(sums.read_text().splitlines()[0] + "\n")          # a release listing the tiny CLIP only
    monkeypatch.setenv(release.ENV, server.url)
    assert release.fetch(seq2seq.lm_asset()) is False
    assert f"(no asset for this version: {server.url}/SHA256SUMS lists no tiny-vl-bart.tar)" in capsys.readouterr().err
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE=1", "CLIPADAPT_ASSETS_URL=none"])
def test_offline_or_turned_off_nothing_is_asked_for(cache, server, monkeypatch, capsys, how):
    name, value = how.split("=")
    monkeypatch.setenv(name, value)
    assert release.fetch(pretrain.clip_asset()) is False
    assert server.log == []
    assert f"the tiny CLIP: not fetched from the release ({'offline: ' if 'HF' in how else ''}{how})" in \
        capsys.readouterr().err
    with pytest.raises(Built):
        pretrain.ensure_tiny_clip(show_progress=False)
    assert server.log == [] and list(cache.iterdir()) == []


def test_an_asset_packed_for_another_recipe_is_not_installed(cache, monkeypatch, capsys):
    other = pretrain.tiny_checkpoint_path().with_name("clipadapt-tiny-microworld-v1-000000000000.pt")
    monkeypatch.setattr(pretrain, "tiny_checkpoint_path", lambda: other)
    assert release.fetch(pretrain.clip_asset()) is False
    err = capsys.readouterr().err
    assert "tiny-clip.tar holds tiny-clip/" in err and f"not tiny-clip/{other.stem}.history.json" in err
    assert "packed for another version of the recipe" in err and list(cache.iterdir()) == []


def test_the_vl_bart_is_fetched_only_onto_the_tiny_clip_it_was_trained_on(cache, tmp_path, monkeypatch, capsys):
    fake_build(cache, monkeypatch, seed=1)                             # another tiny CLIP (and VL-BART) here
    lm = seq2seq.tiny_lm_dir()
    before = {f: (cache / f).read_bytes() for f in files_under(cache)}
    shutil.rmtree(lm)
    assert release.fetch(seq2seq.lm_asset()) is False
    clip = pretrain.digest_path(pretrain.tiny_checkpoint_path()).relative_to(cache).as_posix()
    assert f"(it was built on another model than the one in {cache}: {clip} differs)" in capsys.readouterr().err
    assert not lm.exists() and {f: (cache / f).read_bytes() for f in files_under(cache)} == \
        {f: b for f, b in before.items() if not (cache / f).is_relative_to(lm)}


def test_the_default_release_is_the_books_repository_at_this_versions_tag(monkeypatch):
    url, tag = book.release()
    monkeypatch.delenv(release.ENV, raising=False)
    assert release.base_url() == f"{url}/releases/download/{tag}"
    monkeypatch.setenv(release.ENV, "http://mirror.example/assets/")
    assert release.base_url() == "http://mirror.example/assets"
    monkeypatch.setenv(release.ENV, "none")
    assert release.base_url() is None


def test_the_colab_cell_runs_the_asset_script_that_fetches_first():
    _, install = book.colab_cells(book.notebooks()[0])
    assert install.rstrip().endswith('subprocess.run([sys.executable, "data_scripts/build_ci_assets.py"], check=True)')


def test_build_ci_assets_fetches_then_finds_them_cached_and_offline_builds(cache, built, server, monkeypatch, capsys):
    def run(*args):
        monkeypatch.setattr("sys.argv", ["build_ci_assets.py", *args])
        runpy.run_path(str(SCRIPTS / "build_ci_assets.py"), run_name="__main__")
    run()
    assert files_under(cache) == files_under(built)
    assert capsys.readouterr().err.count("(sha256 verified)") == 2
    run()
    assert capsys.readouterr().out.count("(sha256 checked)") == 2 and len(server.log) == 4   # 2 sums + 2 tars
    monkeypatch.setenv("CLIPADAPT_CACHE", str(cache.parent / "cache2"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")                          # as `make assets` runs it
    with pytest.raises(Built, match="tiny CLIP"):
        run()
    assert len(server.log) == 4 and "(offline: HF_HUB_OFFLINE=1); building it here" in capsys.readouterr().err


# ---- the tiny VL-BART's sha256

def test_the_vl_bart_records_its_sha256_last_and_checks_it(tmp_path):
    order = []

    def write(folder):
        fake_lm_files(folder)
        order.append(sorted(p.name for p in folder.iterdir()))
    out = seq2seq.save_tiny_lm(tmp_path / "lm", write)
    assert seq2seq.LM_DIGEST not in order[0] and not (tmp_path / "lm.tmp").exists()
    digest = (out / seq2seq.LM_DIGEST).read_text()
    assert seq2seq.check_tiny_lm(out) == digest == pretrain.folder_digest(out, exclude=(seq2seq.LM_DIGEST,))


@pytest.mark.parametrize("damage", ["cut short", "changed", "removed", "added"])
def test_a_damaged_vl_bart_names_its_folder_and_the_rebuild_command(tmp_path, damage):
    out = seq2seq.save_tiny_lm(tmp_path / "lm", fake_lm_files)
    target = out / ("model.safetensors" if damage != "added" else "extra.json")
    if damage == "cut short":
        target.write_bytes(target.read_bytes()[:-7])
    elif damage == "changed":
        target.write_bytes(bytes(reversed(target.read_bytes())))
    elif damage == "removed":
        target.unlink()
    else:
        target.write_text("{}")
    pattern = (f"(?s)the tiny VL-BART in {out} does not match the sha256 recorded when it was built.*damaged or "
               "replaced. Rebuild it with\n    python data_scripts/build_ci_assets.py --force tiny-vl-bart")
    with pytest.raises(ChecksumError, match=pattern):
        seq2seq.check_tiny_lm(out)
    with pytest.raises(ChecksumError, match=pattern):
        seq2seq.load_tiny_vl(out)   # the chapter's loader checks before it loads


def test_a_vl_bart_built_before_digests_records_its_own_on_first_use(tmp_path):
    legacy = tmp_path / "lm"
    legacy.mkdir()
    fake_lm_files(legacy)
    assert not (legacy / seq2seq.LM_DIGEST).exists()
    got = seq2seq.check_tiny_lm(legacy)
    assert (legacy / seq2seq.LM_DIGEST).read_text() == got
    (legacy / "visual.pt").write_bytes(b"not the weights")
    with pytest.raises(ChecksumError, match="does not match the sha256 recorded"):
        seq2seq.check_tiny_lm(legacy)
    with pytest.raises(FileNotFoundError, match="(?s)not built yet at .*build_ci_assets.py"):
        seq2seq.check_tiny_lm(tmp_path / "nothing")
