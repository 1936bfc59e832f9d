"""Figure helpers shared by the chapters: one style, a Japanese-capable font, image grids and heatmaps."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns


def setup() -> None:
    """seaborn's style plus a font with Japanese glyphs (IPAex Gothic from matplotlib-fontja)."""
    sns.set_theme(style="whitegrid", context="notebook")
    import matplotlib_fontja  # noqa: F401  (sets the font family on import)
    matplotlib_fontja.japanize()
    plt.rcParams["figure.dpi"] = 100


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, ncols: int = 8,
               size: float = 1.6, title_size: int = 7, suptitle: str | None = None):
    """Show uint8 images in a grid with optional (wrapped) titles; returns the figure."""
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size * (1.45 if titles else 1.0)),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k], interpolation="nearest")
            if titles is not None:
                ax.set_title(_wrap(titles[k], 22), fontsize=title_size)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def _wrap(text: str, width: int) -> str:
    words, lines, cur = text.split(), [], ""
    for w in words:
        if len(cur) + len(w) + 1 > width and cur:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    lines.append(cur)
    return "\n".join(lines[:4])


def confusion_heatmap(cm: np.ndarray, classes: Sequence[str], ax=None, title: str = ""):
    """Row-normalised confusion matrix (true rows, predicted columns) as a seaborn heatmap."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.4))
    sns.heatmap(cm * 100, annot=True, fmt=".0f", cmap="Blues", vmin=0, vmax=100, cbar=False, ax=ax,
                xticklabels=classes, yticklabels=classes, annot_kws={"fontsize": 7})
    ax.set_xlabel("predicted / 予測")
    ax.set_ylabel("true / 正解")
    ax.set_title(title)
    ax.tick_params(labelsize=7)
    return ax
