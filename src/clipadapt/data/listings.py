"""A two-modality ci task with a real domain shift in both modalities: clothing items as a catalog shows them
(source) and as a returns desk records them (target).

- **source, the catalog**: clean Fashion-MNIST photos and plain English catalog lines ("Soft cotton t-shirt in
  navy."), the kind of text and image the frozen encoders were built on.
- **target, the returns desk**: the same ten item types, photographed with a phone (motion blur, shot noise, JPEG
  artefacts, low contrast) and described in warehouse shorthand ("TEE SS BLK M cust ret"). About a third of the
  notes carry no item word at all ("restock, chk seams") and about a tenth name a neighbouring item, as real notes
  do; the label is the item type the desk finally booked.

Images come from the Fashion-MNIST test split (the tiny CLIP pretrained on part of the train split); every text and
corruption is a fixed function of the seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .corruptions import corrupt_batch
from .real import FASHION_CLASSES, load_fashion_mnist

COLOURS = ("black", "white", "navy", "grey", "beige", "red", "olive", "brown")
CATALOG_ADJ = ("Soft", "Classic", "Lightweight", "Relaxed", "Tailored", "Everyday", "Premium", "Casual")
CATALOG_NOUN = {"t-shirt": "cotton t-shirt", "trouser": "trousers", "pullover": "knit pullover", "dress": "dress",
                "coat": "coat", "sandal": "sandals", "shirt": "button-down shirt", "sneaker": "sneakers",
                "bag": "bag", "ankle boot": "ankle boots"}
# warehouse shorthand per item type (SKU-style abbreviations a returns desk uses)
SHORTHAND = {
    "t-shirt": ("TEE SS", "TS CTN", "TOP JRSY", "TSHRT"), "trouser": ("TRS CHINO", "PNT DNM", "TRSR SLIM"),
    "pullover": ("PLVR KNT", "JMPR WL", "SWTR CRW"), "dress": ("DRS MIDI", "DRS SHFT", "FRK"),
    "coat": ("CT WL", "PRKA", "JKT OVR"), "sandal": ("SNDL STRP", "SLDR", "FLP FLP"),
    "shirt": ("SHRT OXF", "BLSE", "SHRT BTN"), "sneaker": ("SNKR LO", "TRNR", "RUNR"),
    "bag": ("BG TOTE", "HNDBG", "BKPK"), "ankle boot": ("BT ANKL", "CHLS BT", "BTIE"),
}
NEIGHBOURS = {"t-shirt": "shirt", "shirt": "t-shirt", "pullover": "coat", "coat": "pullover", "dress": "coat",
              "trouser": "dress", "sandal": "sneaker", "sneaker": "ankle boot", "ankle boot": "sneaker", "bag": "sandal"}
DESK_COLOURS = ("BLK", "WHT", "NVY", "GRY", "BGE", "RD", "OLV", "BRN")
DESK_EXTRA = ("cust ret", "RTN", "dmg tag", "bin 14", "no tag", "2nd chk", "QC", "SZ M", "SZ L", "SZ 38", "B-grade")
DESK_BLANK = ("restock, chk seams", "cust return, no receipt", "see photo", "re-bag + label", "return to vendor?",
              "hold for QC", "scan again", "item from bin 7", "missing tag, pls check", "bundle return")
PHONE = (("motion_blur", 3), ("shot_noise", 3), ("jpeg_compression", 5), ("contrast", 4))
STAFF = ("K. Tanaka", "M. Sato", "Y. Suzuki", "A. Ito", "R. Kato", "desk 2", "night shift")
TABLES = ((200, 170, 120), (90, 120, 160), (150, 150, 150), (60, 60, 60), (170, 110, 90), (120, 160, 110))
P_BLANK, P_NEIGHBOUR = 0.35, 0.10
N_SOURCE, N_POOL, N_TEST = 1_500, 2_000, 1_000


@dataclass
class Domain:
    name: str
    images: np.ndarray      # uint8 n x 28 x 28 x 3
    texts: list[str]
    labels: np.ndarray


def catalog_text(rng: np.random.Generator, item: str) -> str:
    return f"{rng.choice(CATALOG_ADJ)} {CATALOG_NOUN[item]} in {rng.choice(COLOURS)}."


def desk_text(rng: np.random.Generator, item: str) -> str:
    """A returns-desk log line: date, time, who and which bin, then the note."""
    stamp = f"{int(rng.integers(1, 13)):02d}/{int(rng.integers(1, 29)):02d} {int(rng.integers(8, 22)):02d}:{int(rng.integers(60)):02d}"
    head = f"{stamp} {rng.choice(STAFF)} bin {int(rng.integers(1, 40))}:"
    u = rng.random()
    if u < P_BLANK:
        return f"{head} {rng.choice(DESK_BLANK)}"
    named = NEIGHBOURS[item] if u < P_BLANK + P_NEIGHBOUR else item
    parts = [str(rng.choice(SHORTHAND[named])), str(rng.choice(DESK_COLOURS))]
    parts += [str(e) for e in rng.choice(DESK_EXTRA, size=int(rng.integers(0, 3)), replace=False)]
    return f"{head} {' '.join(parts)}"


def phone_photos(images: np.ndarray, seed: int) -> np.ndarray:
    """Each item on one of the desk's tables (a coloured background), then through one of the phone corruptions."""
    rng = np.random.default_rng(seed)
    which = rng.integers(len(PHONE), size=len(images))
    table = np.asarray(TABLES, np.float32)[rng.integers(len(TABLES), size=len(images))][:, None, None, :]
    ink = images.astype(np.float32) / 255.0
    out = np.clip(ink * 255.0 + (1.0 - ink) * table, 0, 255).astype(np.uint8)
    images = out.copy()
    for k, (name, sev) in enumerate(PHONE):
        idx = np.nonzero(which == k)[0]
        if len(idx):
            out[idx] = corrupt_batch(images[idx], name, sev, seed=seed + k)
    return out


def load_listings(seed: int = 0) -> dict[str, Domain]:
    """{"source": the catalog, "target": the returns desk (pool for labelling + held-out test, in that order)}."""
    x, y = load_fashion_mnist("test")
    order = np.random.default_rng(seed).permutation(len(x))
    src, tgt = order[:N_SOURCE], order[N_SOURCE:N_SOURCE + N_POOL + N_TEST]
    rng = np.random.default_rng(seed + 1)
    names = [FASHION_CLASSES[int(k)] for k in y]
    source = Domain("catalog", x[src], [catalog_text(rng, names[i]) for i in src], y[src].astype(np.int64))
    target = Domain("returns desk", phone_photos(x[tgt], seed + 2), [desk_text(rng, names[i]) for i in tgt],
                    y[tgt].astype(np.int64))
    return {"source": source, "target": target}
