"""Choose Scheme 2 ranks per layer so that the *measured* whole-model speedup meets a target.

MACs guide, timing decides:
1. For every layer and every K, the data error of the rank-K truncated SVD (the filter
   optimum, a cheap and faithful proxy for the data fit) comes from one SVD per layer.
2. Greedy: all layers start dense; repeatedly take the step (a layer to a smaller K, or
   from dense to low-rank) with the least added data error per MAC saved, until the
   predicted whole-model speedup (total MACs before / after) reaches the goal.
3. The resulting model (with those SVD factors) is timed against the dense model on the
   real batch; while the measured speedup misses the target plus a noise margin (repeated
   measurements of one model scatter by a few percent here), the MAC goal is raised by the
   shortfall and the greedy continues.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from recon.modules import ConvGeometry, Scheme2Conv
from recon.surgery import get_conv, replace_layer
from recon.timing import median_latencies
from solvers import scheme2
from solvers.objectives import Moments


WHOLE_MODEL_REPEATS = 50  # timed calls per model when the search and the CLI measure a whole model


@dataclass
class LayerOptions:
    """Per-K data error and MACs of one layer (index k-1 holds rank k)."""

    name: str
    dense_macs: int
    errors: np.ndarray
    macs: np.ndarray
    factors: Callable[[int], tuple[np.ndarray, np.ndarray]]


@dataclass
class Selection:
    """Chosen ranks (None: dense) with predicted and measured whole-model speedups."""

    ranks: dict[str, int | None]
    predicted: float
    measured: float


def layer_options(conv: nn.Conv2d, name: str, moments: Moments, input_size: tuple[int, int]) -> LayerOptions:
    """Truncated-SVD data error and MACs for every useful K of one conv."""
    weights = conv.weight.detach().double().numpy()
    n, c, kh, kw = weights.shape
    geometry = ConvGeometry.of(conv)
    ranks = np.arange(1, scheme2.max_rank(weights.shape) + 1)

    def factors(rank: int) -> tuple[np.ndarray, np.ndarray]:
        return tuple(np.asarray(f) for f in scheme2.filter_fit(weights, rank))

    errors = scheme2.truncation_data_errors(weights, moments.covariances()[0])
    macs_per_rank = Scheme2Conv(geometry, np.zeros((1, c, kh)), np.zeros((n, 1, kw))).macs(input_size)
    return LayerOptions(name, geometry.dense_macs(*input_size), errors, ranks * macs_per_rank, factors)


def greedy_ranks(options: list[LayerOptions], other_macs: int, goal: float,
                 start: dict[str, int | None] | None = None) -> tuple[dict[str, int | None], float]:
    """Ranks reaching a predicted speedup >= ``goal`` with the least data error per MAC saved."""
    ranks = dict(start) if start else {o.name: None for o in options}
    total_dense = sum(o.dense_macs for o in options) + other_macs
    cost = lambda o, r: o.dense_macs if r is None else int(o.macs[r - 1])
    error = lambda o, r: 0.0 if r is None else float(o.errors[r - 1])
    current = lambda: sum(cost(o, ranks[o.name]) for o in options) + other_macs
    while total_dense / current() < goal:
        best = None
        for o in options:
            rank = ranks[o.name]
            candidates = range(1, (len(o.macs) if rank is None else rank))
            for target in candidates:
                saved = cost(o, rank) - cost(o, target)
                if saved <= 0:
                    continue
                score = (error(o, target) - error(o, rank)) / saved
                if best is None or score < best[0]:
                    best = (score, o.name, target)
        if best is None:
            break
        ranks[best[1]] = best[2]
    return ranks, total_dense / current()


def dense_macs_by_layer(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates per image of every Conv2d and Linear of ``model``, by name."""
    macs: dict[str, int] = {}

    def count(name):
        def hook(module, args, output):
            per_output = module.weight[0].numel() // (module.groups if isinstance(module, nn.Conv2d) else 1)
            macs[name] = per_output * output[0].numel()
        return hook

    hooks = [module.register_forward_hook(count(name)) for name, module in model.named_modules()
             if isinstance(module, (nn.Conv2d, nn.Linear))]
    try:
        with torch.inference_mode():
            model(example[:1])
    finally:
        for hook in hooks:
            hook.remove()
    return macs


def model_with_ranks(model: nn.Module, options: list[LayerOptions], ranks: dict[str, int | None]) -> nn.Module:
    """A copy of ``model`` with the truncated-SVD Scheme 2 modules of ``ranks``."""
    low = copy.deepcopy(model).eval()
    for option in options:
        rank = ranks[option.name]
        if rank is not None:
            conv = get_conv(model, option.name)
            bias = None if conv.bias is None else conv.bias.detach().numpy()
            replace_layer(low, option.name, Scheme2Conv(ConvGeometry.of(conv), *option.factors(rank), bias))
    return low


def select_ranks(model: nn.Module, options: list[LayerOptions], other_macs: int, target: float,
                 example: torch.Tensor, rounds: int = 6, report: Callable[[str], None] = print,
                 channels_last: bool = False, margin: float = 0.03, repeats: int = WHOLE_MODEL_REPEATS) -> Selection:
    """Greedy ranks whose measured speedup on ``example`` meets ``target`` (best effort in ``rounds``).

    The search aims at ``target * (1 + margin)`` so that a later measurement of the fitted
    model, which scatters by a few percent, still meets ``target``.
    """
    if not target > 1:
        raise ValueError(f"--target-speedup must be > 1, got {target}")
    aim = target * (1 + margin)
    goal, ranks, predicted, measured = aim, None, 1.0, 0.0
    for round_index in range(rounds):
        ranks, predicted = greedy_ranks(options, other_macs, goal, ranks)
        dense_time, low_time = median_latencies([model, model_with_ranks(model, options, ranks)], example, repeats,
                                                channels_last=channels_last)
        measured = dense_time / low_time
        report(f"rank search round {round_index + 1}: predicted {predicted:.2f}x (MACs), measured {measured:.2f}x "
               f"-> {ranks}")
        if measured >= aim:
            break
        goal = max(goal, predicted) * aim / measured
    return Selection(ranks, predicted, measured)
