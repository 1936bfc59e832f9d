"""Short face videos for the PE-CLIP chapter's ci profile: seven DFEW expressions acted by AU dynamics.

A clip is `frames` frames of one subject (an `Identity`). Each expression moves the Action Units of its FACS
description (PE-CLIP's class texts, DFEW order) along an onset-apex-offset curve: a rise of 2-4 frames, an apex of
1-2 frames at a random time, a decay of 2-4 frames. Outside the curve the face is near neutral, so most frames of a
16-frame clip show little: the model has to find the expression in time. Head jitter (a pixel) and sensor noise vary
per frame; the classes are imbalanced as in DFEW, so UAR and WAR differ; subjects are disjoint between the splits.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .faces import AUS, IMAGE_SIZE, Identity, render_face
from .vtab import Task

# DFEW's label order, and the AUs of PE-CLIP's `class_descriptor_7` descriptions
EXPRESSIONS = ("happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear")
EXPRESSION_AUS = {"happiness": (6, 12), "sadness": (1, 4, 15), "neutral": (), "anger": (4, 5, 7, 23),
                  "surprise": (1, 2, 5, 26), "disgust": (9, 15, 16), "fear": (1, 2, 4, 5, 7, 20, 26)}
AU_DESCRIPTIONS = (
    "Cheek Raiser, Lip Corner Puller.", "Inner Brow Raiser, Brow Lowerer, Lip Corner Depressor.",
    "Relaxed Muscles, Even Eyebrows, Closed Lips, Calm Eyes, Smooth Forehead.",
    "Brow Lowerer, Upper Lid Raiser, Lid Tightener, Lip Tightener.",
    "Inner Brow Raiser, Outer Brow Raiser, Upper Lid Raiser, Jaw Drop.",
    "Nose Wrinkler, Lip Corner Depressor, Lower Lip Depressor.",
    "Inner Brow Raiser, Outer Brow Raiser, Brow Lowerer, Upper Lid Raiser, Lid Tightener, Lip Stretcher, Jaw Drop.",
)
# class frequencies shaped like DFEW's (many happy/neutral/sad, few disgust/fear)
CLASS_WEIGHTS = (0.22, 0.17, 0.20, 0.15, 0.12, 0.05, 0.09)


@dataclass
class Clips:
    frames: np.ndarray      # uint8 n x T x 48 x 48 x 3
    labels: np.ndarray      # n, index into EXPRESSIONS
    subjects: np.ndarray    # n, subject id
    apex: np.ndarray        # n, frame index of the apex


def envelope(frames: int, apex: int, rise: int, hold: int, fall: int) -> np.ndarray:
    """Onset-apex-offset intensity in [0, 1] per frame: linear rise to the apex, a `hold`-frame plateau, linear fall."""
    t = np.arange(frames, dtype=np.float32)
    up = np.clip((t - (apex - rise)) / max(rise, 1), 0, 1)
    down = np.clip(1 - (t - (apex + hold)) / max(fall, 1), 0, 1)
    return np.minimum(up, down)


def make_clips(n: int, frames: int = 16, seed: int = 0, subjects: range | None = None) -> Clips:
    """`n` clips; subjects are drawn from `subjects` (ids seed the identities, so splits can keep them apart)."""
    if frames < 5:
        raise ValueError(f"clips need at least 5 frames (an onset, an apex away from both ends, an offset); got {frames}")
    rng = np.random.default_rng(seed)
    subjects = subjects if subjects is not None else range(0, 40)
    ids = {s: Identity.sample(np.random.default_rng(10_000 + s)) for s in subjects}
    labels = rng.choice(len(EXPRESSIONS), size=n, p=CLASS_WEIGHTS)
    who = rng.choice(list(subjects), size=n)
    out = np.zeros((n, frames, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    apexes = np.zeros(n, np.int64)
    for i, (k, s) in enumerate(zip(labels, who)):
        apex = int(rng.integers(2, frames - 2))
        env = envelope(frames, apex, rise=int(rng.integers(2, 5)), hold=int(rng.integers(1, 3)), fall=int(rng.integers(2, 5)))
        peak = rng.uniform(0.75, 1.0)
        base = rng.uniform(0.0, 0.15, len(AUS))
        shift = rng.integers(-1, 2, size=(frames, 2))
        for t in range(frames):
            aus = base.copy()
            for au in EXPRESSION_AUS[EXPRESSIONS[k]]:
                aus[AUS.index(au)] = max(aus[AUS.index(au)], peak * env[t])
            im = np.roll(render_face(aus, ids[s]).astype(np.int16), tuple(shift[t]), axis=(0, 1))
            out[i, t] = np.clip(im + rng.normal(0, 4, im.shape), 0, 255).astype(np.uint8)
        apexes[i] = apex
    return Clips(out, labels.astype(np.int64), who.astype(np.int64), apexes)


def make_split(n_train: int, n_val: int, n_test: int, frames: int = 16, seed: int = 0) -> dict[str, Clips]:
    """Subject-independent splits: subjects 0-24 train, 25-29 validation (model selection), 30-39 test."""
    return {"train": make_clips(n_train, frames, seed, range(0, 25)),
            "val": make_clips(n_val, frames, seed + 1, range(25, 30)),
            "test": make_clips(n_test, frames, seed + 2, range(30, 40))}


def as_task(n_train: int = 400, n_test: int = 200, frames: int = 8, seed: int = 0):
    """The face clips as a `clipadapt.data.vtab.Task` (group "video", the expressions' names as classes; x arrays are
    n x T x 48 x 48 x 3), for methods compared across tasks (the arena); no validation split is drawn."""
    split = make_split(n_train, 0, n_test, frames, seed)
    tr, te = split["train"], split["test"]
    empty = tr.frames[:0]
    return Task("face clips", "video", EXPRESSIONS, tr.frames, tr.labels, empty, tr.labels[:0], te.frames, te.labels)
