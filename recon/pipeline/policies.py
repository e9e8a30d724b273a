"""Rank policies: how many bases each layer gets.

* ``Fixed(48)`` or ``Fixed({"conv2": 48, "conv3": 64})`` (``compress`` also takes the int or
  dict itself): given ranks, checked against each layer before any work.
* ``TargetSpeedup(2.5, example_input)``: ranks whose *measured* whole-model speedup on
  ``example_input`` reaches the target. MACs guide, timing decides: from the method's
  closed-form error of every rank (``Method.rank_errors``), a greedy takes the cheapest
  added error per MAC saved until the predicted speedup reaches the goal; the model with
  those ranks (placeholder factors: timing does not depend on their values) is timed against
  the dense one; while the measurement misses the target plus a margin, the goal is raised by
  the shortfall. Methods without an error estimate get the same MAC reduction in every layer.
  Layers that never pay stay dense.
* ``AccuracyBudget(0.5, metric)``: per layer, bisection on the rank for the smallest one
  whose replacement alone costs at most its share (budget / layers) of ``metric``.

A policy's ``choose`` sees a ``RankProblem``; ``outcome`` may measure the finished model.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from recon.bench.placeholders import timing_model
from recon.bench.timing import median_latencies
from recon.errors import ConfigError
from recon.methods import Method
from recon.nn import Geometry, LowRankModule
from recon.pipeline.fitting import to_numpy
from recon.record import LayerRecord
from recon.surgery import replace_layer
from solvers.objectives import Moments

WHOLE_MODEL_REPEATS = 50  # timed calls per model when a whole model is measured


@dataclass
class RankProblem:
    """What a policy may use: the dense model (on the working device), the method, the layers
    in model order, their geometries, weights and input shapes, symmetric statistics when
    the fit is in data mode, a way to fit one layer, and a way to report progress."""

    model: nn.Module
    method: Method
    layers: list[str]
    geometries: dict[str, Geometry]
    weights: dict[str, np.ndarray]
    input_shapes: dict[str, tuple[int, ...]] | None
    moments: dict[str, Moments] | None
    fit: Callable[[str, Any], LayerRecord]
    report: Callable[[str], None]


@dataclass(frozen=True)
class Outcome:
    """How a finished compression measured against what a policy aimed for."""

    target: float
    measured: float
    met: bool
    description: str


class RankPolicy:
    """Base of the policies: ``choose`` ranks (None keeps a layer dense), optionally ``outcome``."""

    uses_statistics = False

    def check(self, method: Method, geometries: dict[str, Geometry]) -> None:
        """Refuse, before any work, what cannot be done (default: nothing to check)."""

    def choose(self, problem: RankProblem) -> dict[str, Any]:
        raise NotImplementedError

    def outcome(self, dense: nn.Module, approx: nn.Module) -> Outcome | None:
        return None

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description, stored in the bases file's config."""
        raise NotImplementedError


class Fixed(RankPolicy):
    """Given ranks: one for every layer, or one per layer name."""

    def __init__(self, ranks: Any | dict[str, Any]) -> None:
        self.ranks = ranks

    def check(self, method: Method, geometries: dict[str, Geometry]) -> None:
        if isinstance(self.ranks, dict):
            unknown = sorted(set(self.ranks) - set(geometries))
            if unknown:
                raise ConfigError(f"ranks name layer(s) that are not selected: {', '.join(unknown)} "
                                  f"(selected: {', '.join(geometries)})")
            missing = [name for name in geometries if name not in self.ranks]
            if missing:
                raise ConfigError(f"no rank given for layer(s) {', '.join(missing)}")
        for name, geometry in geometries.items():
            try:
                method.check_rank(geometry, self.rank_of(name))
            except ConfigError as err:
                raise ConfigError(f"layer {name!r}: {err}") from None

    def rank_of(self, name: str) -> Any:
        return self.ranks[name] if isinstance(self.ranks, dict) else self.ranks

    def choose(self, problem: RankProblem) -> dict[str, Any]:
        return {name: self.rank_of(name) for name in problem.layers}

    def describe(self) -> dict[str, Any]:
        ranks = self.ranks if isinstance(self.ranks, dict) else {"all": self.ranks}
        return {"policy": "fixed", "ranks": {name: list(r) if isinstance(r, tuple) else r for name, r in ranks.items()}}


@dataclass
class _LayerOptions:
    """Per-rank predicted error and MACs of one layer (index r-1 holds rank r)."""

    name: str
    dense_macs: int
    errors: np.ndarray | None
    macs: np.ndarray


def _greedy(options: list[_LayerOptions], other_macs: int, goal: float,
            start: dict[str, int | None]) -> tuple[dict[str, int | None], float]:
    """Ranks reaching a predicted speedup >= ``goal`` with the least added error per MAC saved."""
    ranks = dict(start)
    total_dense = sum(o.dense_macs for o in options) + other_macs
    cost = lambda o, r: o.dense_macs if r is None else int(o.macs[r - 1])
    error = lambda o, r: 0.0 if r is None else float(o.errors[r - 1])
    current = lambda: sum(cost(o, ranks[o.name]) for o in options) + other_macs
    while total_dense / current() < goal:
        best = None
        for o in options:
            rank = ranks[o.name]
            for target in range(1, len(o.macs) if rank is None else rank):
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


def _uniform(options: list[_LayerOptions], other_macs: int, goal: float,
             start: dict[str, int | None]) -> tuple[dict[str, int | None], float]:
    """The same MAC reduction factor f in every layer (the largest rank with MACs <= dense / f),
    f raised until the predicted speedup reaches ``goal``; ``start`` is not used."""
    total_dense = sum(o.dense_macs for o in options) + other_macs

    def at(factor: float) -> tuple[dict[str, int | None], float]:
        ranks = {}
        for o in options:
            fitting = np.flatnonzero(o.macs * factor <= o.dense_macs)
            ranks[o.name] = int(fitting[-1]) + 1 if len(fitting) else None
        total = sum(o.dense_macs if ranks[o.name] is None else int(o.macs[ranks[o.name] - 1]) for o in options)
        return ranks, total_dense / (total + other_macs)

    factor = 1.0
    ranks, predicted = at(factor)
    while predicted < goal and factor < 1e6:
        factor *= 1.05
        ranks, predicted = at(factor)
    return ranks, predicted


class TargetSpeedup(RankPolicy):
    """Ranks whose measured whole-model speedup on ``example_input`` reaches ``factor``.

    The search aims at ``factor * (1 + margin)`` so that a later measurement of the fitted
    model, which scatters by a few percent, still meets ``factor``.
    """

    uses_statistics = True

    def __init__(self, factor: float, example_input: torch.Tensor, channels_last: bool = False,
                 margin: float = 0.03, rounds: int = 6, repeats: int = WHOLE_MODEL_REPEATS) -> None:
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 1):
            raise ConfigError(f"the target speedup must be a number > 1, got {factor!r}")
        if not isinstance(example_input, torch.Tensor):
            raise ConfigError(f"TargetSpeedup needs an example input tensor to time the model on, "
                              f"got {type(example_input).__name__}")
        if margin < 0 or rounds < 1 or repeats < 1:
            raise ConfigError("margin must be >= 0 and rounds, repeats >= 1")
        self.factor, self.example_input, self.channels_last = float(factor), example_input, channels_last
        self.margin, self.rounds, self.repeats = margin, rounds, repeats
        self.best_searched = 0.0  # the best whole-model speedup the last search measured

    def _options(self, problem: RankProblem) -> tuple[list[_LayerOptions], int]:
        from recon.bench.macs import layer_macs

        all_macs = layer_macs(problem.model, self.example_input.to(next(problem.model.parameters()).device))
        options = []
        for name in problem.layers:
            geometry, shape = problem.geometries[name], problem.input_shapes[name]
            ranks = np.arange(1, problem.method.max_rank(geometry) + 1)
            covariance = None if problem.moments is None else problem.moments[name].covariance()
            options.append(_LayerOptions(
                name, geometry.dense_macs(shape),
                problem.method.rank_errors(problem.weights[name], covariance, geometry.groups),
                np.array([problem.method.macs(geometry, int(r), shape) for r in ranks])))
        other = sum(macs for name, macs in all_macs.items() if name not in problem.layers)
        return options, other

    def choose(self, problem: RankProblem) -> dict[str, Any]:
        options, other = self._options(problem)
        self.best_searched = 0.0
        allocate = _greedy if all(o.errors is not None for o in options) else _uniform
        aim = self.factor * (1 + self.margin)
        goal, ranks, measured = aim, {o.name: None for o in options}, 0.0
        example = self.example_input.to(next(problem.model.parameters()).device)
        modules: dict[tuple[str, Any], LowRankModule] = {}

        def quick(name: str, rank: Any) -> LowRankModule:
            if (name, rank) not in modules:
                bias = problem.model.get_submodule(name).bias
                geometry = problem.geometries[name]
                modules[name, rank] = problem.method.build(geometry, problem.method.quick_fit(
                    problem.weights[name], rank, geometry.groups), None if bias is None else to_numpy(bias))
            return modules[name, rank]

        for round_index in range(self.rounds):
            ranks, predicted = allocate(options, other, goal, ranks)
            timed = timing_model(problem.model, {name: quick(name, rank) for name, rank in ranks.items() if rank})
            dense_time, low_time = median_latencies([problem.model, timed], example, self.repeats,
                                                    channels_last=self.channels_last)
            measured = dense_time / low_time
            self.best_searched = max(self.best_searched, measured)
            problem.report(f"rank search round {round_index + 1}: predicted {predicted:.2f}x (MACs), "
                           f"measured {measured:.2f}x -> {ranks}")
            if measured >= aim:
                break
            goal = max(goal, predicted) * aim / measured
        return ranks

    def outcome(self, dense: nn.Module, approx: nn.Module) -> Outcome:
        example = self.example_input.to(next(dense.parameters()).device)
        t_dense, t_low = median_latencies([dense, approx], example, self.repeats, channels_last=self.channels_last)
        measured = t_dense / t_low
        layout = "channels_last" if self.channels_last else "NCHW"
        where = f"batch {len(self.example_input)}, {layout}, fitted bases"
        if measured >= self.factor:
            return Outcome(self.factor, measured, True, f"target {self.factor:.2f}x met: measured {measured:.2f}x ({where})")
        return Outcome(self.factor, measured, False,
                       f"target {self.factor:.2f}x missed: measured {measured:.2f}x ({where}); the best the rank search "
                       f"measured was {self.best_searched:.2f}x")

    def describe(self) -> dict[str, Any]:
        return {"policy": "target_speedup", "factor": self.factor, "batch": len(self.example_input),
                "input_shape": list(self.example_input.shape[1:]), "channels_last": self.channels_last,
                "margin": self.margin, "rounds": self.rounds, "repeats": self.repeats}


class AccuracyBudget(RankPolicy):
    """The smallest rank per layer (bisection) whose replacement alone lowers ``metric`` by at
    most budget / layers; ``metric(model)`` returns accuracy as a fraction in [0, 1] and the
    budget is in percentage points. Accuracy is not exactly monotone in the rank, so this
    finds a rank at which the budget holds, not a guaranteed minimum."""

    uses_statistics = True

    def __init__(self, points: float, metric: Callable[[nn.Module], float]) -> None:
        if not (isinstance(points, (int, float)) and 0 < points < 100):
            raise ConfigError(f"the accuracy budget must lie between 0 and 100 points, got {points!r}")
        if not callable(metric):
            raise ConfigError("AccuracyBudget needs a metric: a function of the model returning accuracy in [0, 1]")
        self.points, self.metric = float(points), metric

    def _measure(self, model: nn.Module) -> float:
        value = float(self.metric(model))
        if not 0 <= value <= 1:
            raise ConfigError(f"the accuracy metric must return a fraction in [0, 1], got {value}")
        return value

    def choose(self, problem: RankProblem) -> dict[str, Any]:
        dense = self._measure(problem.model)
        share = self.points / 100 / len(problem.layers)
        ranks = {}
        for name in problem.layers:
            low, high = 1, problem.method.max_rank(problem.geometries[name])
            while low < high:
                middle = (low + high) // 2
                approx = copy.deepcopy(problem.model)
                replace_layer(approx, name, problem.fit(name, middle).module)
                drop = dense - self._measure(approx)
                problem.report(f"search {name}: rank {middle} -> validation drop {100 * drop:+.2f} points")
                if drop <= share:
                    high = middle
                else:
                    low = middle + 1
            ranks[name] = low
        return ranks

    def describe(self) -> dict[str, Any]:
        return {"policy": "accuracy_budget", "points": self.points}
