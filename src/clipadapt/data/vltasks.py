"""Vision-language tasks on the shapes micro-world for the VL-PET chapter: every task is text generation.

Four tasks, in the image-text set-up of VL-Adapter / VL-PET (task prompt + visual features in, text out):
- ``vqa``: open questions about one scene (shape, colour, count, position), answered by one word;
- ``gqa``: compositional questions: the object is named by several attributes, another is asked (which colour is
  the striped star on the left? how many red circles are in the image?);
- ``nlvr``: a statement about a *pair* of scenes, answered "true" or "false" (NLVR2 style);
- ``caption``: a full caption of a scene (shape, count, colour, size, texture, position), scored with CIDEr against
  every phrasing that says the same.
Scenes come from `shapes.render_scene`; nlvr's true/false answers are balanced. Same seed, same examples.
A small text corpus (`language_corpus`) of the sentences these tasks use, without images or answers, is what the
tiny encoder-decoder learns the language from before it ever sees a task (as BART learnt English).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import shapes

VL_DATA_VERSION = "vl-1"  # bump when a task generator changes its sentences (the tiny VL-BART's cache key)
TASKS = ("vqa", "gqa", "nlvr", "caption")
PROMPTS = {"vqa": "vqa:", "gqa": "gqa:", "nlvr": "nlvr:", "caption": "caption:",  # the official task prompts
           "match": "image text match:"}  # VL-T5's pretraining task, used only to pretrain the ci model
NLVR_SIDES = ("left", "right")


@dataclass
class VLExample:
    task: str
    images: tuple[int, ...]      # indices into the split's images (two for nlvr)
    text: str                    # the question or statement (empty for captions)
    target: str                  # the answer or one caption used as the training target
    references: tuple[str, ...]  # every acceptable answer (captions: all phrasings)
    weights: tuple[float, ...] = ()  # a score per reference (VQA v2's soft scores); empty: each scores 1


@dataclass
class VLSplit:
    images: Sequence                       # ci: n x 32 x 32 x 3 uint8; paper: the image ids
    scenes: list[shapes.ShapeScene]        # ci only (empty on paper data)
    examples: list[VLExample] = field(default_factory=list)

    def of_task(self, task: str) -> list[VLExample]:
        return [e for e in self.examples if e.task == task]


def _noun(s: shapes.ShapeScene) -> str:
    return s.shape if s.count == 1 else shapes.plural(s.shape)


def captions_of(s: shapes.ShapeScene) -> tuple[str, ...]:
    """Every phrasing of the full caption of scene `s` (the first is the canonical one)."""
    tex = "striped " if s.texture == "striped" else ""
    if s.count == 1:
        return (f"a {s.size} {tex}{s.color} {s.shape} on the {s.position}.",
                f"a photo of a {s.size} {tex}{s.color} {s.shape} on the {s.position}.",
                f"on the {s.position} there is a {s.size} {tex}{s.color} {s.shape}.")
    cw = shapes.COUNT_WORDS[s.count]
    return (f"{cw} {s.color} {_noun(s)}.", f"a photo of {cw} {s.color} {_noun(s)}.",
            f"there are {cw} {s.color} {_noun(s)}.")


def _vqa(rng, s: shapes.ShapeScene) -> tuple[str, str]:
    kinds = ["shape", "color", "count"] + (["position"] if s.count == 1 else [])
    kind = kinds[int(rng.integers(len(kinds)))]
    be = "is" if s.count == 1 else "are"
    if kind == "shape":
        return "what shape is in the picture?", s.shape
    if kind == "color":
        return f"what colour {be} the {_noun(s)}?", s.color
    if kind == "count":
        return "how many shapes are there?", shapes.COUNT_WORDS[s.count]
    return f"where is the {s.shape}?", s.position


def _other(rng, options, not_this):
    rest = [o for o in options if o != not_this]
    return rest[int(rng.integers(len(rest)))]


def _gqa(rng, s: shapes.ShapeScene) -> tuple[str, str]:
    """A compositional question: the object is named by several of its attributes, another one is asked."""
    tex = "striped " if s.texture == "striped" else ""
    kinds = ["color", "count", "shape"] + (["position", "size"] if s.count == 1 else [])
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "color":
        where = f" on the {s.position}" if s.count == 1 else ""
        return f"which colour is the {tex}{_noun(s)}{where}?", s.color
    if kind == "count":
        return f"how many {s.color} {shapes.plural(s.shape)} are in the image?", shapes.COUNT_WORDS[s.count]
    if kind == "shape":
        return f"which shape do the {s.color} objects have?", s.shape
    if kind == "position":
        return f"on which side is the {s.size} {s.color} {s.shape}?", s.position
    return f"is the {s.color} {s.shape} small or large?", s.size


def _nlvr(rng, a: shapes.ShapeScene, b: shapes.ShapeScene) -> tuple[str, str]:
    kind = ["more", "both", "contains"][int(rng.integers(3))]
    if kind == "more":
        side = NLVR_SIDES[int(rng.integers(2))]
        x, y = (a, b) if side == "left" else (b, a)
        true = x.count > y.count
        return f"the {side} image has more shapes than the other image.", "true" if true else "false"
    if kind == "both":
        shape = a.shape if rng.random() < 0.5 else b.shape
        true = a.shape == shape and b.shape == shape
        return f"both images show {shapes.plural(shape)}.", "true" if true else "false"
    side = NLVR_SIDES[int(rng.integers(2))]
    x = a if side == "left" else b
    color = x.color if rng.random() < 0.5 else _other(rng, list(shapes.COLORS), x.color)
    return f"the {side} image contains {color} shapes.", "true" if color == x.color else "false"


def make_vl_split(n_scenes: int, n_per_task: int, seed: int) -> VLSplit:
    """`n_scenes` fresh scenes and `n_per_task` examples of each task drawn on them (nlvr: balanced true/false)."""
    if n_scenes < 2:
        raise ValueError("a split needs at least two scenes (nlvr compares pairs)")
    images, scenes = shapes.make_shapes(n_scenes, seed)
    rng = np.random.default_rng(seed + 1)
    split = VLSplit(images, scenes)
    pick = lambda: int(rng.integers(n_scenes))  # noqa: E731
    for _ in range(n_per_task):
        i = pick()
        q, a = _vqa(rng, scenes[i])
        split.examples.append(VLExample("vqa", (i,), q, a, (a,)))
    for _ in range(n_per_task):
        i = pick()
        q, a = _gqa(rng, scenes[i])
        split.examples.append(VLExample("gqa", (i,), q, a, (a,)))
    want = [("true", "false")[k % 2] for k in range(n_per_task)]
    for w in want:  # redraw pairs until the answer is the one wanted, so true/false stay balanced
        while True:
            i, j = pick(), pick()
            if i == j:
                continue
            st, a = _nlvr(rng, scenes[i], scenes[j])
            if a == w:
                break
        split.examples.append(VLExample("nlvr", (i, j), st, a, (a,)))
    for _ in range(n_per_task):
        i = pick()
        refs = captions_of(scenes[i])
        split.examples.append(VLExample("caption", (i,), "", refs[int(rng.integers(len(refs)))], refs))
    return split


def language_corpus(n_scenes: int, seed: int) -> list[str]:
    """Sentences of the micro-world: captions, questions, statements and the answer words, without images.
    What the tiny encoder-decoder learns its language from (by denoising) before any vision-language training."""
    split = make_vl_split(n_scenes, n_scenes, seed)
    out = []
    for e in split.examples:
        out.append(e.text if e.text else e.target)
    out += [f"the answer is {w}." for w in ("yes", "no", "true", "false")]
    out += [f"the answer is {w}." for w in list(shapes.COLORS) + list(shapes.SHAPES) + list(shapes.POSITIONS)
            + list(shapes.COUNT_WORDS.values())]
    for s in split.scenes:
        out += list(captions_of(s))
    return out
