"""Your own images (`clipadapt adapt` / `predict`): a messy folder made here, end to end; resume after an
interruption; predictions reproduced from the saved adapters; every bad input's error."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from clipadapt import adapt as tool
from clipadapt.arena import ArenaConfig
from clipadapt.cli import main as cli
from clipadapt.data import folder as fold
from clipadapt.data.shapes import make_shapes
from clipadapt.engine import TrainSpec

QUICK = ArenaConfig(shots=4, fit=TrainSpec(epochs=2, lr=3e-3, warmup=0.5, batch_size=16, eval_every=2, eval_last=1))
METHODS = ["zero-shot", "linear probe", "LoRA"]
NAMES = {"circle": "circle", "square": "square", "triangle": "三角形"}   # a non-ASCII class folder


def _save_messy(im: np.ndarray, path, k: int):
    """The k-th image of a class in one of the forms real folders hold."""
    pil = Image.fromarray(im)
    form = k % 8
    if form == 0:
        pil.resize((96, 60)).save(path.with_suffix(".jpg"))                       # bigger, not square, JPEG
    elif form == 1:
        pil.convert("L").save(path.with_suffix(".png"))                           # grey
    elif form == 2:
        rgba = pil.convert("RGBA")
        rgba.putalpha(200)
        rgba.save(path.with_suffix(".png"))                                       # transparency
    elif form == 3:
        pil.convert("CMYK").save(path.with_suffix(".jpg"))                        # CMYK JPEG
    elif form == 4:
        pil.convert("P").save(path.with_suffix(".gif"))                           # palette
    elif form == 5:
        grey = (np.asarray(pil.convert("L"), np.uint16) * 257)
        Image.fromarray(grey).save(path.with_suffix(".png"))                      # 16-bit
    elif form == 6:
        exif = Image.Exif()
        exif[0x0112] = 1                                                          # orientation tag, upright
        pil.save(path.with_suffix(".JPG"), exif=exif)                             # upper-case suffix
    else:
        pil.save(path.with_suffix(".bmp"))


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("own") / "data"
    images, scenes = make_shapes(200, seed=4242)
    for shape in NAMES:
        (root / NAMES[shape]).mkdir(parents=True)
        picked = [i for i, sc in enumerate(scenes) if sc.shape == shape][:10]
        for k, i in enumerate(picked):
            _save_messy(images[i], root / NAMES[shape] / f"画像_{k:02d}", k)
    good = root / "circle" / "画像_00.jpg"
    (root / "circle" / "truncated.jpg").write_bytes(good.read_bytes()[:200])   # cut short
    (root / "circle" / "notes.txt").write_text("not an image")
    (root / "circle" / ".DS_Store").write_bytes(b"\0\1")                        # hidden: not even listed
    (root / ".hidden_class").mkdir()
    return root


@pytest.fixture(scope="module")
def run(messy, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    res = tool.adapt(messy, out, methods=METHODS, shots=4, seeds=2, test_fraction=0.3, cfg=QUICK,
                     show_progress=False)
    return out, res


def test_a_messy_folder_runs_every_method_and_lists_what_it_skipped(run):
    out, res = run
    assert res["info"]["classes"] == ["circle", "square", "三角形"]
    assert len(res["tables"]["runs"]) == len(METHODS) * 2
    skipped = {p.split("/")[-1]: why for p, why in ((s["path"], s["why"]) for s in res["tables"]["skipped"])}
    assert set(skipped) == {"truncated.jpg", "notes.txt"}, skipped
    assert "not an image file" in skipped["notes.txt"] and "OSError" in skipped["truncated.jpg"]
    assert res["info"]["train_images"] + res["info"]["test_images"] == 30   # 10 per class; the cut-short copy skipped
    summary = {r["method"]: r for r in res["tables"]["summary"]}
    assert set(summary) == {"zero-shot", "linear probe", "LoRA"}
    assert all(0 <= r["mean"] <= 100 for r in summary.values())
    pick = res["tables"]["pick"]
    board = {m: r["mean"] for m, r in summary.items()}
    assert board[pick["best"]] == max(board.values()) and pick["pick"] in pick["within_one_std"]
    assert json.loads((out / "results.json").read_text(encoding="utf-8"))["metrics"] == res["metrics"]
    assert sorted(p.name for p in (out / "adapters").iterdir()) == ["linear-probe", "lora", "zero-shot"]


def test_predict_gives_the_labels_and_probabilities_of_the_run(run):
    out, res = run
    test = res["tables"]["test"]
    classes = res["info"]["classes"]
    for name in ("LoRA", "zero-shot"):
        df = tool.predict(out / "adapters" / tool.slug(name), test["paths"])
        kept = test["predictions"][name]
        assert list(df["label"]) == [classes[k] for k in kept["pred"]]
        np.testing.assert_allclose(df["probability"], kept["prob"], atol=1e-5)


def test_the_predict_command_prints_a_line_per_image_and_writes_a_csv(run, capsys, tmp_path):
    out, res = run
    paths = res["tables"]["test"]["paths"][:3] + [str(tmp_path / "missing.png")]
    code = cli(["predict", "--adapter", str(out / "adapters" / "lora"), *paths, "--csv", str(tmp_path / "p.csv")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 1 and len(lines) == 4, "a missing file is reported on its line and fails the command"
    assert lines[-1].startswith(str(tmp_path / "missing.png")) and "FileNotFoundError" in lines[-1]
    assert (tmp_path / "p.csv").read_text().count("\n") == 5


def test_a_rerun_resumes_without_training_and_an_interrupted_run_keeps_what_finished(messy, run, monkeypatch,
                                                                                      tmp_path):
    out, first = run
    from clipadapt.arena import core

    def no_training(*a, **k):
        raise AssertionError("a finished job trained again")
    monkeypatch.setattr(core, "fit_classifier", no_training)
    again = tool.adapt(messy, out, methods=METHODS, shots=4, seeds=2, test_fraction=0.3, cfg=QUICK,
                       show_progress=False)
    assert again["metrics"] == first["metrics"]
    monkeypatch.undo()

    def stop_after_two(row, seen=[]):
        seen.append(row)
        if len(seen) == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        tool.adapt(messy, tmp_path, methods=METHODS, shots=4, seeds=2, test_fraction=0.3, cfg=QUICK,
                   show_progress=False, on_run=stop_after_two)
    partial = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert partial["info"]["interrupted"] and len(partial["tables"]["runs"]) == 2
    assert len(list((tmp_path / "jobs").glob("*.pt"))) == 2


def test_a_csv_with_its_own_split(messy, tmp_path):
    files = sorted(p for p in messy.rglob("画像_*"))
    lines = ["path,label,split"] + [f"{p.relative_to(messy.parent)},{p.parent.name},{'test' if i % 3 == 0 else 'train'}"
                                    for i, p in enumerate(files)]
    (messy.parent / "list.csv").write_text("\n".join(lines), encoding="utf-8")
    res = tool.adapt(messy.parent / "list.csv", tmp_path, methods=["zero-shot"], shots=4, seeds=1, cfg=QUICK,
                     show_progress=False)
    assert res["info"]["test_images"] == len(files[::3])


def test_bad_inputs_say_what_to_do(messy, tmp_path):
    one = tmp_path / "one"
    (one / "ok").mkdir(parents=True)
    for k, p in enumerate(sorted((messy / "square").iterdir())[:3]):
        (one / "ok" / p.name).write_bytes(p.read_bytes())
    with pytest.raises(ValueError, match="the data has 1 class .*needs at least 2 classes"):
        tool.adapt(one, tmp_path / "o1", methods=["zero-shot"], shots=1, seeds=1, cfg=QUICK, show_progress=False)
    (one / "few").mkdir()
    (one / "few" / "a.png").write_bytes((one / "ok" / sorted((one / "ok").iterdir())[0].name).read_bytes())
    with pytest.raises(ValueError, match="class 'few' has 1 readable images: it needs --shots \\(2\\)"):
        tool.adapt(one, tmp_path / "o2", methods=["zero-shot"], shots=2, seeds=1, cfg=QUICK, show_progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist: give a folder with one subfolder per class"):
        fold.list_images(tmp_path / "nowhere")
    (tmp_path / "bad.csv").write_text("file,class\na.png,x\n")
    with pytest.raises(ValueError, match="needs a header with the columns path,label"):
        fold.list_images(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="backbone 'ViT-B-16': give clipadapt-tiny"):
        tool.Backbone("ViT-B-16").parts
    with pytest.raises(FileNotFoundError, match="is not an adapter saved by `clipadapt adapt`"):
        tool.predict(tmp_path, ["x.png"])


def test_images_are_read_upright_at_8_bits_and_huge_ones_refused(tmp_path, monkeypatch):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = 255                                      # white left half
    exif = Image.Exif()
    exif[0x0112] = 6                                     # stored rotated: shown turned 90 degrees clockwise
    Image.fromarray(a).save(tmp_path / "r.jpg", exif=exif, quality=95)
    up = fold.read_image(tmp_path / "r.jpg", 20)
    assert up[:10].mean() > 200 and up[10:].mean() < 60, "the white half is on top once the EXIF turn is applied"
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "w16.png")
    assert fold.read_image(tmp_path / "w16.png", 8).min() == 255
    monkeypatch.setattr(fold, "MAX_PIXELS", 100)
    with pytest.raises(ValueError, match="more than the 100 read here"):
        fold.read_image(tmp_path / "r.jpg", 20)


def test_a_backbone_is_the_tiny_clip_an_open_clip_tag_or_a_local_checkpoint():
    from clipadapt.models.pretrain import tiny_checkpoint_path
    assert tool.Backbone("clipadapt-tiny").parts == ("clipadapt-tiny", None)
    assert tool.Backbone("ViT-B-16:openai").parts == ("ViT-B-16", "openai")
    local = tool.Backbone(f"clipadapt-tiny:{tiny_checkpoint_path()}")
    a, b = local.load(), tool.Backbone("clipadapt-tiny").load()
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))


# ---- adapt-online: a stream of the user's images

@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    """36 shape images in a fixed order, 12 of each class, as files; a labelled CSV of them and an unlabelled folder."""
    root = tmp_path_factory.mktemp("stream")
    images, scenes = make_shapes(200, seed=777)
    order = [i for i, sc in enumerate(scenes) if sc.shape in ("circle", "square", "triangle")][:36]
    (root / "frames").mkdir()
    rows = ["path,label"]
    for k, i in enumerate(order):
        Image.fromarray(images[i]).save(root / "frames" / f"{k:03d}.png")
        rows.append(f"frames/{k:03d}.png,{scenes[i].shape}")
    (root / "stream.csv").write_text("\n".join(rows) + "\n")
    return root


def test_online_with_labels_measures_accuracy_in_the_streams_order(stream, tmp_path):
    from clipadapt.online import adapt_online
    res = adapt_online(stream / "stream.csv", tmp_path, batch_size=10, show_progress=False)
    m = res["metrics"]
    assert set(res["info"]["classes"]) == {"circle", "square", "triangle"} and res["info"]["labelled"]
    assert {f"accuracy[{k}]" for k in ("zero-shot", "Tent", "BATCLIP")} <= set(m)
    assert res["info"]["cannot_tell"] is None
    assert res["info"]["order"][:2] == [str(stream / "frames" / "000.png"), str(stream / "frames" / "001.png")]
    for k in ("zero-shot", "Tent", "BATCLIP"):   # 36 images in batches of 10: the tail of 6 is adapted on too
        assert len(res["tables"][f"stream[{k}]"]["pred"]) == 36
        assert sum(sum(w.values()) for w in res["tables"][f"class_mix[{k}]"]) == 36
    assert json.loads((tmp_path / "online.json").read_text())["metrics"] == m


def test_online_without_labels_says_what_it_cannot_tell(stream, tmp_path, capsys):
    code = cli(["adapt-online", str(stream / "frames"), "--classes", "circle,square,triangle", "--out",
                str(tmp_path), "--batch-size", "8"])
    out = capsys.readouterr().out
    assert code == 0 and "agreement_with_zero_shot[BATCLIP]" in out and "cannot tell whether Tent or BATCLIP" in out
    res = json.loads((tmp_path / "online.json").read_text())
    assert not any(k.startswith("accuracy") for k in res["metrics"])
    assert 0 <= res["metrics"]["agreement_with_zero_shot[Tent]"] <= 100


def test_online_bad_inputs_say_what_to_do(stream, tmp_path):
    from clipadapt.online import adapt_online
    with pytest.raises(ValueError, match="name at least 2 classes"):
        adapt_online(stream / "frames", tmp_path, show_progress=False)
    with pytest.raises(ValueError, match=r"labels \['triangle'\] are not among the classes"):
        adapt_online(stream / "stream.csv", tmp_path, classes=["circle", "square"], show_progress=False)
    with pytest.raises(ValueError, match="batch_size must be at least 2"):
        adapt_online(stream / "stream.csv", tmp_path, batch_size=1, show_progress=False)


def test_a_method_that_cannot_be_saved_is_compared_but_not_picked(messy, tmp_path):
    cfg = ArenaConfig(shots=4, fit=QUICK.fit, head_epochs=5)
    res = tool.adapt(messy, tmp_path, methods=["contrastive head", "zero-shot"], shots=4, seeds=1, cfg=cfg,
                     show_progress=False)
    assert {r["method"] for r in res["tables"]["runs"]} == {"contrastive head", "zero-shot"}
    assert res["tables"]["pick"]["pick"] == "zero-shot"
    assert res["tables"]["pick"]["not_candidates"] == ["contrastive head"]
    assert [p.name for p in (tmp_path / "adapters").iterdir()] == ["zero-shot"]
    assert "not candidates" in (tmp_path / "report.html").read_text(encoding="utf-8")
