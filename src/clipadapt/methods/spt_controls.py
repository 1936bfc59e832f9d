"""SPT's ablations and controls: the same allocation and training as SPT-LoRA (`clipadapt.methods.spt.SPT`), with
the budget forced to one kind of module, or the sensitivity ranking replaced by a random or a magnitude ranking."""
from __future__ import annotations

from .registry import register
from .spt import SPT


@register("spt-unstructured", "SPT, sparse entries only")
class SPTUnstructured(SPT):
    """SPT's ablation: the budget goes to sparse entries only (alpha = 0, no structured module)."""
    alpha = 0.0


@register("spt-structured", "SPT, structured only")
class SPTStructured(SPT):
    """SPT's ablation: every matrix with a sensitive entry gets a LoRA module (alpha = inf)."""
    alpha = float("inf")


@register("random-mask", "random mask")
class RandomMask(SPT):
    """Control: SPT's allocation from a random ranking instead of sensitivity."""
    scores, needs_data = "random", False


@register("magnitude-mask", "magnitude mask")
class MagnitudeMask(SPT):
    """Control: SPT's allocation from |w| instead of sensitivity."""
    scores, needs_data = "magnitude", False
