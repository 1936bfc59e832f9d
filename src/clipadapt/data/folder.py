"""A user's own labelled images: a folder with one subfolder per class (torchvision's ImageFolder layout) or a CSV
of `path,label[,split]`, read as real folders are: mixed sizes and modes (grey, RGBA, CMYK, palette, 16-bit), EXIF
rotation, hidden files, non-ASCII names, unreadable or truncated files (skipped with the reason), huge images
(decoded downscaled where the format allows, refused above a pixel limit). Every image becomes an RGB square at the
backbone's input size: the shorter side resized to it, then the centre cropped, as CLIP's own preprocessing does.
"""
from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..utils import progress

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MAX_PIXELS = 180_000_000   # larger images are skipped (a decoded 180-megapixel RGB image is about 0.5 GB)


@dataclass
class Listing:
    """What a folder or CSV names: image paths, their class names and optional split ("train"/"test")."""
    paths: list[Path]
    labels: list[str]
    splits: list[str | None]
    descriptions: dict[str, str] = field(default_factory=dict)   # class -> one line for the text classifiers
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (path, why) of files that are not images


def _visible(p: Path) -> bool:
    return not p.name.startswith(".") and not p.name.startswith("__")


def list_images(data: str | Path, names_file: str | Path | None = None) -> Listing:
    """The labelled images of `data`: a folder of class folders, or a CSV with a header `path,label[,split]` (paths
    relative to the CSV's folder). `names_file`: optional lines `folder<TAB>name[<TAB>description]` that rename the
    classes and describe them (the text classifiers read "a photo of a {name}." or the description)."""
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"{data} does not exist: give a folder with one subfolder per class, or a CSV with "
                                "the columns path,label[,split]")
    skipped: list[tuple[str, str]] = []
    if data.is_file():
        if data.suffix.lower() != ".csv":
            raise ValueError(f"{data} is a file but not a .csv: give a folder of class folders or a CSV "
                             "(path,label[,split])")
        paths, labels, splits = _read_csv(data)
    else:
        classes = sorted(d for d in data.iterdir() if d.is_dir() and _visible(d))
        if not classes:
            raise ValueError(f"{data} has no class folders: put each class's images in a subfolder named after the "
                             "class (e.g. data/ok/*.jpg, data/scratch/*.jpg)")
        paths, labels, splits = [], [], []
        for d in classes:
            for f in sorted(p for p in d.rglob("*") if p.is_file()):
                if not all(_visible(part) for part in [Path(x) for x in f.relative_to(d).parts]):
                    continue
                if f.suffix.lower() not in EXTENSIONS:
                    skipped.append((str(f), f"not an image file ({f.suffix or 'no suffix'})"))
                    continue
                paths.append(f), labels.append(d.name), splits.append(None)
    names, descriptions = read_names(names_file, sorted(set(labels)))
    return Listing(paths, [names.get(lab, lab) for lab in labels], splits, descriptions, skipped)


def _read_csv(path: Path):
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise ValueError(f"{path} needs a header with the columns path,label (and optionally split); found "
                         f"{', '.join(rows[0]) if rows else 'no rows'}")
    splits = [(r.get("split") or "").strip().lower() or None for r in rows]
    bad = sorted({s for s in splits if s not in (None, "train", "test")})
    if bad:
        raise ValueError(f"{path}: split must be 'train' or 'test' (or empty), found {', '.join(bad)}")
    if any(s is None for s in splits) and any(s is not None for s in splits):
        raise ValueError(f"{path}: give a split on every row or on none (a seeded test split is then held out)")
    return [path.parent / r["path"].strip() for r in rows], [r["label"].strip() for r in rows], splits


def read_names(names_file, labels: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """From lines `label<TAB>name[<TAB>description]`: label -> name, and name -> description ({} without a file)."""
    if names_file is None:
        return {}, {}
    names, descriptions = {}, {}
    for i, line in enumerate(Path(names_file).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("\t")]
        if len(parts) < 2 or parts[0] not in labels:
            raise ValueError(f"{names_file}, line {i}: expected `label<TAB>name[<TAB>description]` with a label of "
                             f"the data ({', '.join(labels)}), got {line!r}")
        names[parts[0]] = parts[1]
        if len(parts) > 2 and parts[2]:
            descriptions[parts[1]] = parts[2]
    return names, descriptions


def read_image(path: str | Path, size: int) -> np.ndarray:
    """One file as a uint8 size x size x 3 RGB image: EXIF rotation applied, any mode converted (transparency on
    white, 16-bit scaled), shorter side resized to `size` and the centre cropped. Errors name the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ValueError(f"{im.width} x {im.height} pixels is more than the {MAX_PIXELS:,} read here")
            im.draft("RGB", (size * 2, size * 2))   # JPEG: decode at a reduced scale (bounded memory)
            im = ImageOps.exif_transpose(im)
            im.load()
    return square(to_rgb(im), size)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode as RGB: 16/32-bit grey scaled to 8 bits, transparency composed on white, CMYK and palettes
    converted."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if im.mode == "F":
        a = np.asarray(im)
        im = Image.fromarray(np.clip(a * (255.0 if a.max() <= 1 else 1.0), 0, 255).astype(np.uint8))
    if im.mode in ("P", "PA", "LA", "RGBA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def square(im: Image.Image, size: int) -> np.ndarray:
    """Shorter side to `size` (bicubic), then the centre `size` x `size`."""
    scale = size / min(im.size)
    w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
    im = im.resize((w, h), Image.Resampling.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def load_listing(listing: Listing, size: int, show_progress: bool = True) -> tuple[np.ndarray, list[int]]:
    """The images of `listing` at `size` (n x size x size x 3 uint8) and the positions that were read; files that
    cannot be read are added to `listing.skipped` with the reason and left out."""
    images, kept = [], []
    for i, p in enumerate(progress(listing.paths, desc="read images", disable=not show_progress)):
        try:
            images.append(read_image(p, size))
            kept.append(i)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            listing.skipped.append((str(p), f"{type(e).__name__}: {e}"))
    return (np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)), kept
