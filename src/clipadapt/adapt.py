"""Your own images: the arena's methods on a user's labelled folder (`clipadapt adapt`), and the saved adapters put
to work on new images (`clipadapt predict`).

`adapt` reads the folder (`clipadapt.data.folder`), holds out a stratified, seeded test split (unless the data gives
one), runs every chosen method with the arena's shared protocol (`clipadapt.arena`: the same few-shot sample per
seed, the same schedule, a fresh backbone per run) over the seeds, and writes into `out`:
- `report.html`: one self-contained page in English and Japanese (`clipadapt.report`);
- `results.json`: a run record (`clipadapt.results.RunRecord`) with every run, the per-method summary, the pick by the
  arena's rule, the test predictions, the files skipped and the set-up;
- `adapters/<method>/`: the trained weights and config of each method's best seed, with `adapter.json` (the backbone,
  the classes and their texts), which `predict` loads;
- `jobs/`: every finished (method, seed), so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from . import arena
from .arena.core import ImagesAsClips, _runs, get_method
from .checkpoints import JobStore
from .data.folder import Listing, list_images, load_listing, read_image
from .data.vtab import Task, has_class_names
from .methods import load_trained
from .methods.base import ClassTexts
from .models.loader import LoadedCLIP, load_backbone, load_clip
from .models.tiny import TINY_NAME
from .models.vit import clip_image_tower
from .report import write_report
from .results import RunRecord
from .transforms import preprocess_batch
from .utils import atomic_write, spawn_seeds

ADAPTER = "adapter.json"


@dataclass(frozen=True)
class Backbone:
    """`clipadapt-tiny` (the ci profile's tiny CLIP, offline), an open_clip `NAME:TAG`, or `NAME:/path/to/file.pt`."""
    spec: str

    @property
    def parts(self) -> tuple[str, str | None]:
        if self.spec == TINY_NAME:
            return TINY_NAME, None
        name, sep, tag = self.spec.partition(":")
        if not sep or not tag:
            raise ValueError(f"backbone {self.spec!r}: give {TINY_NAME} (offline), an open_clip NAME:TAG such as "
                             "ViT-B-16:openai, or NAME:/path/to/checkpoint.pt")
        return name, tag

    def load(self, device: str = "cpu") -> LoadedCLIP:
        name, tag = self.parts
        return load_backbone("ci", device=device) if tag is None else load_clip(name, tag, device=device)


def _task(listing: Listing, images: np.ndarray, kept: list[int], shots: int, seed: int,
          test_fraction: float) -> tuple[Task, np.ndarray, np.ndarray]:
    """The task (classes sorted by name) and the positions in `kept` of its train and test images."""
    labels = [listing.labels[i] for i in kept]
    splits = [listing.splits[i] for i in kept]
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"the data has {len(classes)} class ({', '.join(classes) or 'no images read'}): adapting "
                         "needs at least 2 classes")
    y = np.array([classes.index(lab) for lab in labels], np.int64)
    if splits and splits[0] is not None:
        train = np.array([s == "train" for s in splits])
        for c, name in enumerate(classes):
            if not (train & (y == c)).any() or not (~train & (y == c)).any():
                raise ValueError(f"class {name!r} needs at least one train and one test image in the given split")
    else:
        train = np.ones(len(y), bool)
        rng = np.random.default_rng(spawn_seeds(seed, 1, "test split")[0])
        for c, name in enumerate(classes):
            idx = np.flatnonzero(y == c)
            if len(idx) < shots + 1:
                raise ValueError(f"class {name!r} has {len(idx)} readable images: it needs --shots ({shots}) to learn "
                                 f"from plus at least one to test on; add images or lower --shots to {len(idx) - 1}")
            n_test = min(max(1, round(test_fraction * len(idx))), len(idx) - shots)
            train[rng.permutation(idx)[:n_test]] = False
    tr, te = np.flatnonzero(train), np.flatnonzero(~train)
    empty = images[:0]
    task = Task("own images", "own", tuple(classes), images[tr], y[tr], empty, y[:0], images[te], y[te])
    task.texts = tuple(listing.descriptions.get(c) or arena.TEMPLATE.format(c) for c in classes)
    return task, tr, te


UNSAVED = ("contrastive head",)   # rows whose trained predictor (a head and a scikit-learn classifier) is not saved yet


def default_methods(backbone: LoadedCLIP, task: Task) -> list[str]:
    """The arena's rows that fit and can be saved for `predict`: image-tower rows need a ViT tower, text classifiers
    class names (the contrastive head can still be asked for by name: it is compared, not saved nor picked)."""
    vit = hasattr(backbone.model.visual, "conv1") and hasattr(backbone.model.visual, "transformer")
    return [m.name for m in arena.ARENA.values() if m.name not in UNSAVED
            and (vit or m.backbone == "CLIP") and (m.backbone != "CLIP" or has_class_names(task))]


def _fingerprint(listing: Listing, kept, backbone: str, shots: int, seed: int, cfg, texts) -> str:
    """What a finished job depends on: the backbone, the set-up, the class texts and every image file read."""
    h = hashlib.sha256(json.dumps([backbone, shots, seed, repr(cfg), list(texts)]).encode())
    for i in kept:
        st = Path(listing.paths[i]).stat()
        h.update(f"{listing.paths[i]}|{listing.labels[i]}|{listing.splits[i]}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


@torch.no_grad()
def _probs(model, x: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    model.eval()
    dev = next(model.parameters()).device
    return torch.cat([model(x[i:i + batch_size].to(dev)).float().softmax(-1).cpu()
                      for i in range(0, len(x), batch_size)]).numpy()


def _inner(model):
    return model.inner if isinstance(model, ImagesAsClips) else getattr(model, "vit", model)


def adapt(data: str | Path, out: str | Path, backbone: str = TINY_NAME, methods: list[str] | None = None,
          shots: int = 16, seeds: int = 3, seed: int = 0, test_fraction: float = 0.25, names: str | Path | None = None,
          cfg: arena.ArenaConfig | None = None, device: str | None = None, show_progress: bool = True,
          on_run: Callable[[dict], None] | None = None) -> dict:
    """Run the arena's methods on the images of `data` and write results, adapters and jobs into `out` (see the
    module docstring). Returns the results record as a dict. Ctrl-C keeps what finished: results.json is written
    with the runs so far, and the next call resumes."""
    if shots < 1 or seeds < 1:
        raise ValueError(f"shots and seeds must be at least 1, got shots={shots}, seeds={seeds}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction is the share of each class held out for testing, 0 < x < 1; got {test_fraction}")
    out, bb = Path(out), Backbone(backbone)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    profile = "ci" if device == "cpu" else "paper"
    clip = bb.load(device)
    size = clip.image_size
    listing = list_images(data, names)
    images, kept = load_listing(listing, size, show_progress)
    task, tr, te = _task(listing, images, kept, shots, seed, test_fraction)
    cfg = cfg or arena.ArenaConfig(shots=shots)
    chosen = [get_method(m).name for m in (methods or default_methods(clip, task))]
    run_seeds = spawn_seeds(seed, seeds)
    key = ("adapt", _fingerprint(listing, kept, backbone, shots, seed, cfg, task.texts))
    rec = RunRecord("adapt", profile, seed)
    rec.info.update(backbone=backbone, preprocess=str(clip.preprocess), image_size=size, classes=list(task.classes),
                    texts=list(task.texts), shots=shots, seeds=run_seeds, methods=chosen, data=str(data),
                    train_images=len(tr), test_images=len(te), config=asdict(cfg))
    rows, preds, best = [], {}, {}
    x_test = preprocess_batch(clip.preprocess, task.x_test)
    test_paths = [str(listing.paths[kept[i]]) for i in te]
    try:
        for _, method, s, built, row in _runs(chosen, [task], run_seeds, cfg, profile, show_progress,
                                              desc="methods x seeds", store=JobStore(out / "jobs"), key=key,
                                              load=lambda: bb.load(device)):
            rows.append(row)
            if on_run is not None:
                on_run(row)
            if built.fit is None and row["value"] > best.get(method.name, -1.0):
                best[method.name] = row["value"]
                p = _probs(built.model, x_test)
                preds[method.name] = {"seed": s, "pred": p.argmax(1).tolist(), "prob": p.max(1).round(6).tolist()}
                _save_adapter(built, method, out / "adapters" / slug(method.name), backbone, task, size)
    except KeyboardInterrupt:
        rec.info["interrupted"] = True
        _write(rec, out, rows, preds, task, test_paths, listing)
        raise
    return _write(rec, out, rows, preds, task, test_paths, listing)


def slug(name: str) -> str:
    """A method's folder name under adapters/."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _save_adapter(built, row, folder: Path, backbone: str, task: Task, size: int) -> None:
    built.method.save(_inner(built.model), folder)
    meta = {"backbone": backbone, "row": row.name, "tower": row.backbone, "classes": list(task.classes),
            "texts": list(task.texts), "image_size": size}
    atomic_write(folder / ADAPTER, lambda p: p.write_text(json.dumps(meta, indent=1, ensure_ascii=False)))


def _write(rec: RunRecord, out: Path, rows, preds, task: Task, test_paths, listing: Listing) -> dict:
    runs = pd.DataFrame(rows)
    rec.tables["runs"] = _records(runs)
    rec.tables["skipped"] = [{"path": p, "why": w} for p, w in listing.skipped]
    rec.tables["test"] = {"paths": test_paths, "labels": task.y_test.tolist(), "predictions": preds}
    if len(runs):
        board = runs.groupby("method").agg(mean=("value", "mean"), std=("value", "std"), seeds=("seed", "count"),
                                           trainable=("trainable", "mean"), train_mb=("train_mb", "mean"),
                                           s_per_step=("s_per_step", "mean"), adapt_s=("adapt_s", "mean"))
        rec.tables["summary"] = _records(board.reset_index())
        # the arena's rule over the methods saved for `predict`; one that trains nothing needs no training memory
        saved = board.loc[[m for m in board.index if m in preds]]
        if len(saved):
            choice, near = arena.pick(saved.assign(train_mb=saved["train_mb"].fillna(0.0)))
            rec.tables["pick"] = {"best": saved["mean"].idxmax(), "within_one_std": near, "pick": choice,
                                  "not_candidates": [m for m in board.index if m not in preds]}
        for m, v in board["mean"].items():
            rec.log(f"accuracy[{m}]", v)
    text = rec.to_json()
    atomic_write(out / "results.json", lambda p: p.write_text(text, encoding="utf-8"))
    res = json.loads(text)
    if len(runs):
        write_report(res, out)
    return res


def _records(df: pd.DataFrame) -> list[dict]:
    """Rows as plain JSON values: NaN (no training step, one seed's deviation) becomes null."""
    return df.astype(object).where(df.notna(), None).to_dict("records")


def load_adapter(folder: str | Path, device: str = "cpu"):
    """A saved adapter on its backbone: (model taking preprocessed images, its LoadedCLIP, the adapter's meta)."""
    folder = Path(folder)
    if not (folder / ADAPTER).is_file():
        raise FileNotFoundError(f"{folder} is not an adapter saved by `clipadapt adapt` (no {ADAPTER}); give a folder "
                                "DIR/adapters/<method> of an adapt run")
    meta = json.loads((folder / ADAPTER).read_text(encoding="utf-8"))
    clip = Backbone(meta["backbone"]).load(device)
    base = (clip_image_tower(clip.model.visual, len(meta["classes"])) if meta["tower"] == "image tower"
            else ClassTexts(clip.model, clip.tokenizer, meta["texts"]))
    _, model = load_trained(folder, base)
    model = ImagesAsClips(model) if meta["tower"] == "CLIP" else model
    return model.to(device).eval(), clip, meta


def predict(adapter: str | Path, paths, batch_size: int = 64, device: str = "cpu") -> pd.DataFrame:
    """One row per image: path, predicted label, its probability; an unreadable file gets the reason instead."""
    model, clip, meta = load_adapter(adapter, device)
    rows, images, ok = [], [], []
    for p in paths:
        try:
            images.append(read_image(p, meta["image_size"]))
            ok.append(str(p))
        except (OSError, ValueError, SyntaxError) as e:
            rows.append({"path": str(p), "label": None, "probability": None, "error": f"{type(e).__name__}: {e}"})
    if images:
        probs = _probs(model, preprocess_batch(clip.preprocess, np.stack(images)), batch_size)
        rows += [{"path": p, "label": meta["classes"][k], "probability": float(pr[k]), "error": None}
                 for p, pr, k in zip(ok, probs, probs.argmax(1))]
    order = {str(p): i for i, p in enumerate(paths)}
    return pd.DataFrame(rows).sort_values("path", key=lambda c: c.map(order)).reset_index(drop=True)
