"""Corruption streams: what an online test-time method sees, one corruption at a time, on either profile.

A source has a `name`, the `classes` and `stream(corruption, severity, seed)` returning (uint8 images, labels) in
stream order. `seed` fixes the order (a seeded shuffle, as the official TTA code shuffles its test set once) and,
for generated corruptions, their random draws; the same seed gives the same stream.
- `GeneratedC` (ci): the 15 CIFAR-10-C corruptions applied to a labelled set (micro-world shapes, Fashion-MNIST).
- `ReleasedC` (paper): CIFAR-10-C, CIFAR-100-C or ImageNet-C as published, from `data_scripts/prepare_corruptions.py`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .corruptions import check, corrupt_batch
from .microworld import LabelledSet
from .registry import get_spec, load_corrupted


@dataclass
class GeneratedC:
    base: LabelledSet

    @property
    def name(self) -> str:
        return f"{self.base.name}-C (generated)"

    @property
    def classes(self):
        return self.base.classes

    def __len__(self) -> int:
        return len(self.base.images)

    def head(self, n: int) -> "GeneratedC":
        """The same source on the first n base images."""
        b = self.base
        return GeneratedC(LabelledSet(b.name, b.images[:n], b.labels[:n], b.classes))

    def stream(self, corruption: str, severity: int, seed: int = 0):
        check(corruption, severity)
        order = np.random.default_rng(seed).permutation(len(self.base.images))
        return corrupt_batch(self.base.images[order], corruption, severity, seed=seed), np.asarray(self.base.labels)[order]


@dataclass
class ReleasedC:
    dataset: str                      # "cifar10-c", "cifar100-c" or "imagenet-c"
    root: str | Path | None = None    # data root (None: $CLIPADAPT_DATA or ~/.cache/clipadapt/data)
    n: int | None = None              # first n images of each stream (None: all of the release)

    def __post_init__(self):
        self.spec = get_spec(self.dataset)

    @property
    def name(self) -> str:
        return self.spec.folder + ("" if self.n is None else f" ({self.n:,}-image subset)")

    @property
    def classes(self):
        return self.spec.classes

    def __len__(self) -> int:
        return self.spec.per_severity if self.n is None else min(self.n, self.spec.per_severity)

    def head(self, n: int) -> "ReleasedC":
        """The same release, first n images of each stream."""
        return replace(self, n=min(n, len(self)))

    def stream(self, corruption: str, severity: int, seed: int = 0):
        return load_corrupted(self.dataset, corruption, severity, self.root, self.n, seed)
