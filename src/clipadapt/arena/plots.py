"""The arena's accuracy-against-cost figures (the arena chapter and the own-images report draw the same ones)."""
from __future__ import annotations

import numpy as np
import pandas as pd


def pareto(x: pd.Series, y: pd.Series) -> list[str]:
    """Methods not beaten on both axes at once (fewer is better on x, more on y), in x order."""
    pts = pd.DataFrame({"x": x, "y": y}).sort_values(["x", "y"], ascending=[True, False])
    front, best = [], -np.inf
    for m, row in pts.iterrows():
        if row["y"] > best:
            front.append(m)
            best = row["y"]
    return front


def frontier_plot(board: pd.DataFrame, front: list[str], x: str, xlabel: str, title: str, ax) -> None:
    """Mean accuracy against `x` for the methods that train, the front as a grey step, zero-shot as a line."""
    import seaborn as sns
    trained = board[board["trainable"] > 0]
    ax.step(trained.loc[front, x], trained.loc[front, "mean"], where="post", color="0.75", lw=3, zorder=0)
    sns.scatterplot(data=trained.reset_index(), x=x, y="mean", hue="method", style="backbone", s=90, ax=ax,
                    hue_order=list(board.index))
    ax.errorbar(trained[x], trained["mean"], yerr=trained["std"], fmt="none", ecolor="0.4", lw=1, zorder=1)
    if "zero-shot" in board.index:
        ax.axhline(board.loc["zero-shot", "mean"], ls="--", color="0.3", lw=1)
        ax.annotate("zero-shot", (trained[x].min(), board.loc["zero-shot", "mean"]), fontsize=8, va="bottom")
    ax.set(xscale="log", xlabel=xlabel, ylabel="mean accuracy (%)", title=title)
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
