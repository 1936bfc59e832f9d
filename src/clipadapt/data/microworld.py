"""The micro-world: one seeded corpus of captioned images that the tiny CLIP is pretrained on, and the held-out
sets that measure its zero-shot ability.

Sources: shapes scenes (32x32, captions with shape/colour/size/position/count/texture), cartoon faces (48x48,
captioned by their active Action Units) and Fashion-MNIST train images (28x28, captioned by class name with a few
templates). Images keep their native sizes; the model's own preprocessing resizes them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..utils import progress as bar
from . import faces, real, shapes

DATA_VERSION = "mw-1"  # bump when a generator changes what it draws
HELDOUT_SEED = 10_000  # seeds at or above this are never used for pretraining
FASHION_TEMPLATES = ("a photo of a {}.", "a {}.", "a black and white photo of a {}.", "a product photo of a {}.",
                     "a picture of a {}.", "a photo of the {}.")
ZERO_SHOT_TEMPLATE = "a photo of a {}."


@dataclass
class Corpus:
    """Captioned images from several sources; `images[i]` is uint8 HxWx3 (sizes differ between sources)."""
    images: list[np.ndarray] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    source: list[str] = field(default_factory=list)

    def add(self, images, captions, source: str) -> None:
        self.images.extend(list(images))
        self.captions.extend(captions)
        self.source.extend([source] * len(captions))

    def __len__(self) -> int:
        return len(self.captions)


def pretraining_corpus(seed: int, n_shapes: int, n_faces: int, n_fashion: int, progress: bool = True) -> Corpus:
    """The pretraining mixture. Same arguments, same corpus."""
    if seed >= HELDOUT_SEED:
        raise ValueError(f"pretraining seeds must be < {HELDOUT_SEED} (held-out sets use the seeds above)")
    rng = np.random.default_rng(seed)
    c = Corpus()
    with bar(total=3, desc="micro-world corpus", disable=not progress) as pb:
        x, scenes = shapes.make_shapes(n_shapes, seed)
        c.add(x, [s.caption for s in scenes], "shapes")
        pb.update()
        x, _, caps = faces.make_faces(n_faces, seed + 1)
        c.add(x, caps, "faces")
        pb.update()
        if n_fashion:
            fx, fy = real.load_fashion_mnist("train")
            idx = rng.permutation(len(fx))[:n_fashion]
            tmpl = rng.integers(len(FASHION_TEMPLATES), size=len(idx))
            c.add(fx[idx], [FASHION_TEMPLATES[t].format(real.FASHION_CLASSES[fy[i]]) for i, t in zip(idx, tmpl)],
                  "fashion")
        pb.update()
    return c


@dataclass
class LabelledSet:
    """A classification set for zero-shot evaluation: images, integer labels and the class names they index."""
    name: str
    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]

    def __post_init__(self):
        if len(self.images) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels; give one label "
                             "per image")
        if len(self.labels) and (int(np.min(self.labels)) < 0 or int(np.max(self.labels)) >= len(self.classes)):
            raise ValueError(f"{self.name}: labels run from {int(np.min(self.labels))} to {int(np.max(self.labels))} "
                             f"but there are {len(self.classes)} class names; give one name per label id")


def heldout_shapes(n: int = 2000, seed: int = HELDOUT_SEED) -> LabelledSet:
    """Shape scenes never seen in pretraining, labelled by shape."""
    x, scenes = shapes.make_shapes(n, seed)
    y = np.array([shapes.SHAPES.index(s.shape) for s in scenes], np.int64)
    return LabelledSet("shapes (held out)", x, y, shapes.SHAPES)


def fashion_test(n: int | None = None) -> LabelledSet:
    """Fashion-MNIST test split (first `n` images, or all 10,000)."""
    x, y = real.load_fashion_mnist("test")
    if n is not None:
        x, y = x[:n], y[:n]
    return LabelledSet("Fashion-MNIST test", x, y, real.FASHION_CLASSES)


def heldout_faces(n: int = 1000, seed: int = HELDOUT_SEED + 1) -> tuple[np.ndarray, np.ndarray]:
    """Faces of unseen identities and AU combinations: (images, AU intensities n x 13)."""
    x, aus, _ = faces.make_faces(n, seed)
    return x, aus
