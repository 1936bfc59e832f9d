"""Downloads of the paper profile's data: resumable, verified against published checksums (a local stand-in server)."""
import hashlib
import http.client
import http.server
import importlib.util
import io
import json
import runpy
import socket
import sys
import tarfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from clipadapt.utils import ChecksumError, DownloadError, download

MiB = 1 << 20
SCRIPTS = Path(__file__).parents[1] / "data_scripts"


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.files`; honours Range when `server.ranges`; `server.cut[path]` ends one response early."""

    def do_GET(self):
        srv = self.server
        rng = self.headers.get("Range")
        srv.log.append((self.path, rng))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = int(rng.split("=")[1].rstrip("-")) if rng and srv.ranges else 0
        part = body[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        cut = srv.cut.pop(self.path, None)
        self.wfile.write(part[:cut] if cut else part)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.cut, srv.log, srv.ranges = {}, {}, [], True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.url = f"http://127.0.0.1:{srv.server_port}"
    yield srv
    srv.shutdown()


def md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


def test_an_interrupted_download_resumes_where_it_stopped_and_is_verified(server, tmp_path):
    data = np.random.default_rng(0).bytes(3 * MiB + 123)
    server.files["/a.tar"] = data
    server.cut["/a.tar"] = MiB + MiB // 2          # the connection drops in the second MiB
    dest = tmp_path / "a.tar"
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        download(f"{server.url}/a.tar", dest, md5(data))
    part = tmp_path / "a.tar.part"
    assert not dest.exists() and part.stat().st_size == MiB + MiB // 2   # what arrived is kept
    assert download(f"{server.url}/a.tar", dest, md5(data)) == dest
    assert dest.read_bytes() == data and not part.exists()
    assert server.log[-1] == ("/a.tar", f"bytes={MiB + MiB // 2}-"), "the second run should ask only for the rest"


def test_a_server_that_ignores_range_restarts_the_file(server, tmp_path):
    data = np.random.default_rng(1).bytes(2 * MiB)
    server.files["/b.bin"], server.ranges = data, False
    (tmp_path / "b.bin.part").write_bytes(data[:MiB])
    download(f"{server.url}/b.bin", tmp_path / "b.bin", md5(data))
    assert (tmp_path / "b.bin").read_bytes() == data


def test_a_checksum_mismatch_is_reported_and_the_file_set_aside(server, tmp_path):
    data = b"not what the record says" * 1000
    server.files["/c.tar"] = data
    wrong = "md5:" + "0" * 32
    with pytest.raises(ChecksumError, match=f"md5 is {hashlib.md5(data).hexdigest()}, the source publishes 0{{32}}"):
        download(f"{server.url}/c.tar", tmp_path / "c.tar", wrong)
    assert not (tmp_path / "c.tar").exists() and (tmp_path / "c.tar.corrupt").read_bytes() == data
    download(f"{server.url}/c.tar", tmp_path / "c.tar", md5(data))   # the next run downloads anew
    assert (tmp_path / "c.tar").read_bytes() == data


def test_an_existing_file_is_verified_without_downloading(server, tmp_path):
    data = b"prepared once on a shared data root"
    (tmp_path / "d.bin").write_bytes(data)
    download(f"{server.url}/d.bin", tmp_path / "d.bin", "sha256:" + hashlib.sha256(data).hexdigest())
    assert server.log == []
    with pytest.raises(ChecksumError):
        download(f"{server.url}/d.bin", tmp_path / "d.bin", "sha256:" + "f" * 64)


def _fake_cifar_c_tar(folder: str) -> bytes:
    from clipadapt.data.corruptions import CORRUPTIONS
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name in [*CORRUPTIONS, "labels"]:
            arr = io.BytesIO()
            np.save(arr, np.zeros((5, 2, 2, 3) if name != "labels" else (5,), np.uint8))
            info = tarfile.TarInfo(f"{folder}/{name}.npy")
            info.size = arr.tell()
            arr.seek(0)
            t.addfile(info, arr)
    return buf.getvalue()


def test_prepare_corruptions_checks_each_tar_against_the_md5_zenodo_publishes(server, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "prep_c", Path(__file__).parents[1] / "data_scripts" / "prepare_corruptions.py")
    prep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prep)
    monkeypatch.setattr(prep, "ZENODO_URL", server.url)
    tar = _fake_cifar_c_tar("CIFAR-10-C")
    server.files["/records/2535967/files/CIFAR-10-C.tar"] = tar
    server.files["/api/records/2535967"] = json.dumps(
        {"files": [{"key": "CIFAR-10-C.tar", "checksum": md5(tar), "size": len(tar)}]}).encode()
    monkeypatch.setattr("sys.argv", ["prepare_corruptions.py", "--dataset", "cifar10-c", "--root", str(tmp_path)])
    prep.main()
    assert prep.is_ready("cifar10-c", tmp_path / "CIFAR-10-C")
    # a record whose published MD5 the download does not match stops with the checksum error
    other = _fake_cifar_c_tar("CIFAR-100-C")
    server.files["/records/3555552/files/CIFAR-100-C.tar"] = other
    server.files["/api/records/3555552"] = json.dumps(
        {"files": [{"key": "CIFAR-100-C.tar", "checksum": md5(other + b"x")}]}).encode()
    monkeypatch.setattr("sys.argv", ["prepare_corruptions.py", "--dataset", "cifar100-c", "--root", str(tmp_path)])
    with pytest.raises(ChecksumError, match="CIFAR-100-C.tar"):
        prep.main()
    assert not (tmp_path / "CIFAR-100-C").exists()


@pytest.fixture
def offline(monkeypatch):
    """No network: every urlopen fails as a failed name lookup does."""
    def urlopen(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def run_script(monkeypatch, name: str, *args: str) -> str:
    """Run data_scripts/<name> as the command line does; the message it exits with."""
    monkeypatch.setattr("sys.argv", [name, *args])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(SCRIPTS / name), run_name="__main__")
    return str(e.value.code)


def test_S20_a_refused_connection_names_the_url_the_reason_and_where_a_copy_goes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError) as e:
        download(f"http://127.0.0.1:{port}/x.tar", tmp_path / "x.tar")
    assert f"could not download http://127.0.0.1:{port}/x.tar (" in str(e.value)
    assert "refused" in str(e.value).lower()
    assert f"put it at {tmp_path / 'x.tar'}" in str(e.value)


def test_S20_prepare_corruptions_offline_says_which_tar_to_unpack_where(offline, monkeypatch, tmp_path):
    msg = run_script(monkeypatch, "prepare_corruptions.py", "--dataset", "cifar10-c", "--root", str(tmp_path))
    assert msg.startswith("error: could not download https://zenodo.org/api/records/2535967 ")
    assert "Name or service not known" in msg
    assert "download CIFAR-10-C.tar from https://zenodo.org/records/2535967" in msg
    assert f"unpack it into {tmp_path}" in msg and "labels.npy" in msg
    with tarfile.open(fileobj=io.BytesIO(_fake_cifar_c_tar("CIFAR-10-C"))) as t:   # the route the message gives
        t.extractall(tmp_path, filter="data")
    monkeypatch.setattr("sys.argv", ["prepare_corruptions.py", "--dataset", "cifar10-c", "--root", str(tmp_path)])
    runpy.run_path(str(SCRIPTS / "prepare_corruptions.py"), run_name="__main__")


def test_S21_prepare_vtab1k_without_task_adaptation_gives_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "task_adaptation", None)
    msg = run_script(monkeypatch, "prepare_vtab1k.py", "--task", "svhn", "--root", str(tmp_path))
    assert "needs the package 'task_adaptation', which is not installed" in msg
    assert "pip install tensorflow tensorflow-datasets git+https://github.com/google-research/task_adaptation" in msg


def test_S22_prepare_dfer_offline_says_where_the_lists_and_frames_go(offline, monkeypatch, tmp_path):
    msg = run_script(monkeypatch, "prepare_dfer.py", "--dataset", "dfew", "--root", str(tmp_path))
    assert "could not download https://raw.githubusercontent.com/SAADI-Ibtissam/PE-CLIP/" in msg
    assert "DFEW_set_1_test.txt ... DFEW_set_5_train.txt, 10 files" in msg
    assert f"put them in {tmp_path / 'dfer' / 'dfew' / 'annotation'}" in msg
    assert "https://dfew-dataset.github.io" in msg and f"put them under {tmp_path / 'dfer' / 'dfew' / 'Clip'}" in msg


def test_S23_prepare_mmimdb_offline_points_to_archive(offline, monkeypatch, tmp_path):
    msg = run_script(monkeypatch, "prepare_mmimdb.py", "--root", str(tmp_path))
    assert "could not download http://lisi1.unal.edu.co/mmimdb/mmimdb.tar.gz (" in msg
    assert f"python data_scripts/prepare_mmimdb.py --root {tmp_path} --archive PATH/TO/mmimdb.tar.gz" in msg


def test_S24_prepare_fgvc_offline_points_to_archive(offline, monkeypatch, tmp_path):
    msg = run_script(monkeypatch, "prepare_fgvc.py", "--dataset", "cub", "--root", str(tmp_path))
    assert "could not download https://data.caltech.edu/records/65de6-vkk18/files/CUB_200_2011.tgz (" in msg
    assert f"prepare_fgvc.py --dataset cub --root {tmp_path} --archive PATH/TO/CUB_200_2011.tgz" in msg


def test_S25_prepare_vladapter_offline_points_to_tool(offline, monkeypatch, tmp_path):
    msg = run_script(monkeypatch, "prepare_vladapter.py", "--root", str(tmp_path))
    assert "could not download https://raw.githubusercontent.com/ylsung/VL_adapter/" in msg
    assert f"prepare_vladapter.py --root {tmp_path} --tool PATH/TO/restore_datasets.py" in msg


def test_S26_download_weights_with_hf_hub_offline_says_to_unset_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = run_script(monkeypatch, "download_weights.py", "--model", "ViT-B-16", "--pretrained", "openai",
                     "--cache", str(tmp_path))
    assert "HF_HUB_OFFLINE=1 is set in this environment" in msg
    assert (f"HF_HUB_OFFLINE=0 python data_scripts/download_weights.py --model ViT-B-16 --pretrained openai "
            f"--cache {tmp_path}") in msg


def test_B7_arena_bench_refuses_zero_repeats_before_any_set_up(monkeypatch, capsys, tmp_path):
    from clipadapt.arena import bench
    from clipadapt.bench import time_per_step

    def never(*args, **kwargs):
        raise AssertionError("set-up ran before the repeats were checked")
    monkeypatch.setattr(bench, "load_backbone", never)
    monkeypatch.setattr(bench.vtab, "load_task", never)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")   # the ci profile sets it; restored after the test
    with pytest.raises(SystemExit) as e:
        bench.main(["bench", "--repeats", "0", "--out", str(tmp_path / "bench.json")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "repeats must be at least 1" in err and "--repeats 5" in err
    with pytest.raises(ValueError, match="repeats >= 1"):
        time_per_step(lambda: None, repeats=0)
