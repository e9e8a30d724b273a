"""The never-slower guard: keep a dense layer wherever its low-rank replacement is not
measurably faster on the real input shape.

Each candidate is timed against the dense layer it replaces, side by side, on that layer's
actual input (captured from one forward pass of an example batch); the low-rank module is
kept only when dense time / low-rank time >= ``min_speedup`` (default 1.05: at least 5%) at the
lower end of its timing rounds (two, more while they disagree).
Time it in the memory format inference will use (``channels_last=True`` for models run in
channels_last): the verdict can differ between formats.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from recon.bench.timing import capture_layer_inputs, median_latencies, spread_until_stable
from recon.record import GuardDecision

LOG = logging.getLogger("recon")
MIN_SPEEDUP = 1.05
GUARD_MAX_ROUNDS = 6  # rounds a layer's timing may take while they disagree


def time_replacement(dense: nn.Module, low_rank: nn.Module, inputs: torch.Tensor, name: str,
                     min_speedup: float = MIN_SPEEDUP, repeats: int = 50, channels_last: bool = False,
                     rounds: int = 2) -> GuardDecision:
    """Time ``low_rank`` against ``dense`` on ``inputs``; kept when faster by ``min_speedup``.

    The pair is timed in at least ``rounds`` independent rounds, more (up to
    ``GUARD_MAX_ROUNDS``) while they disagree (``spread_until_stable``), and judged by the
    lower end of their middle rounds: a layer near parity measured 1.06x-1.11x in one round and
    0.89x later, so one lucky round must not keep it.
    """
    timed: list[list[float]] = []

    def measure() -> list[float]:
        timed.append(median_latencies([dense, low_rank], inputs, repeats, channels_last=channels_last))
        return timed[-1]

    spread = spread_until_stable(measure, rounds, max(rounds, GUARD_MAX_ROUNDS))
    t_dense, t_low = next(times for times in timed if times[0] / times[1] == spread.low)
    decision = GuardDecision(name, 1e3 * t_dense, 1e3 * t_low, spread.low >= min_speedup)
    LOG.info("%s%s", decision, "" if spread.stable else f" (rounds {spread.describe()})")
    return decision


def guard_replacements(model: nn.Module, replacements: dict[str, nn.Module], example_input: torch.Tensor,
                       min_speedup: float = MIN_SPEEDUP, repeats: int = 50,
                       channels_last: bool = False) -> list[GuardDecision]:
    """Decide for each named replacement (on ``model``'s real input shapes) whether to keep it."""
    inputs = capture_layer_inputs(model, list(replacements), example_input)
    return [time_replacement(model.get_submodule(name), module, inputs[name], name, min_speedup, repeats,
                             channels_last) for name, module in replacements.items()]
