"""Global rank allocation: one choice per layer (dense, or a method at a rank) minimising the summed
predicted loss under a latency budget, a multiple-choice knapsack solved by Lagrangian
relaxation.

For a price ``mu`` of one second, each layer independently takes the choice minimising
loss + mu * seconds; the total time falls as ``mu`` grows, so a bisection on ``mu`` finds the
cheapest price whose choices fit the budget. The answer is optimal among the allocations on
the lower convex hull of each layer's (seconds, loss) curve (Everett 1963), which is where
the useful ranks lie, and needs no step size or rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LayerChoices:
    """What one layer may become: ``options[i]`` (any label: a rank, a (method, rank) pair,
    None for dense) costs ``seconds[i]`` and adds ``losses[i]`` of predicted loss."""

    options: tuple[Any, ...]
    seconds: np.ndarray
    losses: np.ndarray

    def index(self, option: Any) -> int:
        """Where ``option`` is among the choices."""
        return self.options.index(option)

    def pick(self, price: float) -> int:
        """Index of the choice that is best at ``price`` per second (ties: the faster)."""
        score = self.losses + price * self.seconds
        best = np.flatnonzero(score <= score.min() + 1e-15 * max(1.0, abs(score.min())))
        return int(best[np.argmin(self.seconds[best])])


def _picks(layers: dict[str, LayerChoices], price: float) -> tuple[dict[str, int], float]:
    picks = {name: choices.pick(price) for name, choices in layers.items()}
    return picks, float(sum(layers[name].seconds[index] for name, index in picks.items()))


def allocate(layers: dict[str, LayerChoices], budget: float, iterations: int = 100) -> dict[str, Any]:
    """Per layer, the option of the least-loss allocation whose summed seconds are at most
    ``budget``; the fastest allocation when none fits."""
    picks, total = _picks(layers, 0.0)
    if total <= budget:
        return {name: layers[name].options[index] for name, index in picks.items()}
    spread = max(float(np.ptp(c.losses)) for c in layers.values()) or 1.0
    gaps = [float(np.ptp(c.seconds)) for c in layers.values() if np.ptp(c.seconds) > 0]
    low, high = 0.0, spread / (min(gaps) if gaps else 1.0) * 1e6  # at ``high`` every layer takes its fastest
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        if _picks(layers, middle)[1] <= budget:
            high = middle
        else:
            low = middle
    picks, _ = _picks(layers, high)
    return {name: layers[name].options[index] for name, index in picks.items()}
