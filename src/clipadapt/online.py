"""Your own unlabelled images as a stream (`clipadapt adapt-online`): zero-shot, Tent and BATCLIP (the BATCLIP
chapter's test-time methods, through the method registry) over the images in the order given, each from a fresh
backbone, predicting every batch before adapting on it.

Where the stream has labels (a CSV `path,label`), the accuracy of each method. Where it has none, what can be
measured honestly: the predictions' entropy over time, how often each method agrees with zero-shot, and the mix of
predicted classes over time; and a plain statement of what cannot be (whether adapting helped).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from .adapt import Backbone
from .data.folder import EXTENSIONS, Listing, load_listing, read_names
from .methods import build_method
from .methods.tta import per_image_entropy
from .models.tiny import TINY_NAME
from .results import RunRecord
from .transforms import preprocess_batch
from .utils import atomic_write, progress

METHODS = {"zero-shot": "source", "Tent": "tent", "BATCLIP": "batclip"}
CANNOT = ("Without labels no accuracy can be measured, so this run cannot tell whether Tent or BATCLIP helped: lower "
          "entropy means more confident predictions, not more correct ones, and a method that drifts to one class "
          "becomes very confident. Label a sample of the stream (a CSV path,label) to measure it.")


def list_stream(stream: str | Path, classes: list[str] | None = None,
                names: str | Path | None = None) -> tuple[Listing, list[str]]:
    """The images of a stream in order: a folder (files sorted by name, no labels) or a CSV `path[,label]` (its
    order); and the class names: `classes`, else the CSV's labels (sorted). `names`: as in `clipadapt adapt` (labels
    keep the given names; the texts use the renamed ones and their descriptions)."""
    stream = Path(stream)
    if not stream.exists():
        raise FileNotFoundError(f"{stream} does not exist: give a folder of images or a CSV path[,label]")
    if stream.is_dir():
        paths = sorted(p for p in stream.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS
                       and not any(part.startswith(".") for part in p.relative_to(stream).parts))
        labels = [None] * len(paths)
    else:
        with open(stream, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
        if not rows or "path" not in rows[0]:
            raise ValueError(f"{stream} needs a header with a path column (and optionally label)")
        paths = [stream.parent / r["path"].strip() for r in rows]
        labels = [(r.get("label") or "").strip() or None for r in rows]
    known = sorted({lab for lab in labels if lab is not None})
    classes = list(classes) if classes else known
    if len(classes) < 2:
        raise ValueError("name at least 2 classes (--classes a,b,... or labels in a CSV): the methods classify by the "
                         "text of each class")
    unknown = sorted(set(known) - set(classes))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {classes}")
    renamed, descriptions = read_names(names, classes)
    texts = {c: descriptions.get(renamed.get(c, c)) or f"a photo of a {renamed.get(c, c)}." for c in classes}
    return Listing(paths, labels, [None] * len(paths), texts), classes


def adapt_online(stream: str | Path, out: str | Path, backbone: str = TINY_NAME, classes: list[str] | None = None,
                 names: str | Path | None = None, batch_size: int = 32, methods=tuple(METHODS), windows: int = 10,
                 device: str = "cpu", show_progress: bool = True) -> dict:
    """Run each test-time method over the stream in order and write `out`/online.json (a run record): per method the
    predictions, their entropy and agreement with zero-shot, the class mix per stretch of the stream, and accuracy
    where labels exist. Returns the record as a dict."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown online method(s) {unknown}; choose from {', '.join(METHODS)}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (the test-time losses compare the images of a batch), "
                         f"got {batch_size}")
    listing, classes = list_stream(stream, classes, names)
    bb, out = Backbone(backbone), Path(out)
    clip = bb.load(device)
    images, kept = load_listing(listing, clip.image_size, show_progress)
    if not len(images):
        raise ValueError(f"no image of {stream} could be read: see the skipped files {listing.skipped[:3]}")
    texts = [listing.descriptions[c] for c in classes]
    labelled = [listing.labels[i] for i in kept]
    y = None if any(lab is None for lab in labelled) else np.array([classes.index(lab) for lab in labelled])
    rec = RunRecord("adapt-online", "ci" if device == "cpu" else "paper", 0)
    rec.info.update(backbone=backbone, classes=classes, texts=texts, batch_size=batch_size, images=len(images),
                    labelled=y is not None, stream=str(stream), order=[str(listing.paths[i]) for i in kept])
    preds = {}
    for name in methods:
        model = bb.load(device).model
        m = build_method(METHODS[name], model, clip.tokenizer, texts, template="{}")
        p, h = [], []
        for i in progress(range(0, len(images), batch_size), desc=name, disable=not show_progress):
            x = preprocess_batch(clip.preprocess, images[i:i + batch_size]).to(device)
            logits = m(x) if len(x) >= m.min_batch else m.predict(x)
            with torch.no_grad():
                p.append(logits.argmax(1).cpu().numpy()), h.append(per_image_entropy(logits.float()).cpu().numpy())
        preds[name] = np.concatenate(p)
        ent = np.concatenate(h)
        rec.tables[f"stream[{name}]"] = {"pred": preds[name].tolist(), "entropy": ent.round(5).tolist(),
                                         "skipped_updates": m.skipped_updates}
        rec.log(f"mean_entropy[{name}]", float(ent.mean()))
        if y is not None:
            rec.log(f"accuracy[{name}]", 100 * float((preds[name] == y).mean()))
    stretches = np.array_split(np.arange(len(images)), min(windows, len(images)))
    for name, pred in preds.items():
        if "zero-shot" in preds and name != "zero-shot":
            rec.log(f"agreement_with_zero_shot[{name}]", 100 * float((pred == preds["zero-shot"]).mean()))
        rec.tables[f"class_mix[{name}]"] = [{c: int((pred[s] == k).sum()) for k, c in enumerate(classes)}
                                            for s in stretches]
    rec.info["cannot_tell"] = None if y is not None else CANNOT
    rec.tables["skipped"] = [{"path": p, "why": w} for p, w in listing.skipped]
    text = rec.to_json()
    atomic_write(out / "online.json", lambda p: p.write_text(text, encoding="utf-8"))
    return json.loads(text)
