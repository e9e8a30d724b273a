"""Rank policies: how many bases each layer gets (and, for ``TargetSpeedup``, by which method).

* ``Fixed(48)`` or ``Fixed({"conv2": 48, "conv3": 64})`` (``compress`` also takes the int or
  dict itself): given ranks, checked against each layer before any work.
* ``TargetSpeedup(2.5)`` (``recon.pipeline.target_speedup``): ranks whose *measured*
  whole-model speedup reaches the target. The only policy that also chooses the method per
  layer (``method="auto"``).
* ``AccuracyBudget(0.5, metric)``: per layer, bisection on the rank for the smallest one
  whose replacement alone costs at most its share (budget / layers) of ``metric``.

A policy's ``choose`` sees a ``RankProblem`` and returns a ``Search``: a ``Choice(method,
rank)`` or None (dense) per layer, and whatever its ``revise`` and ``outcome`` need later.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from recon.bench.settings import Timing
from recon.bench.timing import Spread
from recon.errors import ConfigError
from recon.inputs import Batch
from recon.methods import Method
from recon.nn import Geometry
from recon.record import LayerRecord
from recon.surgery import replace_layer
from solvers.objectives import Moments


class Choice(NamedTuple):
    """What a policy gives a layer: a method and its rank."""

    method: Method
    rank: Any


@dataclass
class RankProblem:
    """What a policy may use: the dense model (on the working device), the layers in model
    order, each layer's candidate methods (one unless the policy chooses methods), their
    geometries and weights, symmetric statistics when the fit is in data mode, ``sample``, a
    batch of real inputs (None without data), a way to fit one layer to a ``Choice``, a
    way to report progress, the example the model is timed on (a ``timing.batch`` batch; None
    without data or example) with each layer's input within it, and how to time."""

    model: nn.Module
    methods: dict[str, tuple[Method, ...]]
    layers: list[str]
    geometries: dict[str, Geometry]
    weights: dict[str, np.ndarray]
    moments: dict[str, Moments] | None
    sample: Batch | None
    fit: Callable[[str, Choice], LayerRecord]
    report: Callable[[str], None]
    example: Batch | None = None
    timing: Timing = Timing()
    layer_inputs: dict[str, torch.Tensor] | None = None

    def method_of(self, name: str) -> Method:
        """The method of a layer that has one candidate."""
        if len(self.methods[name]) != 1:
            raise ConfigError(f"layer {name!r} has several candidate methods; this policy needs one")
        return self.methods[name][0]


@dataclass(frozen=True)
class Outcome:
    """How a finished compression measured against what a policy aimed for."""

    target: float
    measured: float
    met: bool
    description: str
    output_change: float | None = None  # the fitted model's measured output change (bounded TargetSpeedup)
    spread: Spread | None = None  # the speedup's rounds (TargetSpeedup)


@dataclass(frozen=True)
class Search:
    """What a policy's ``choose`` found: a ``Choice`` per layer (None keeps it dense). A policy
    that measures more (``TargetSpeedup``) returns a subclass holding what its ``revise`` and
    ``outcome`` need, so the policy object itself keeps no state between compressions."""

    picked: dict[str, Choice | None]

    @property
    def chosen(self) -> dict[str, Choice]:
        """The layers to replace, with their choices."""
        return {name: choice for name, choice in self.picked.items() if choice is not None}


class RankPolicy:
    """Base of the policies: ``choose`` a ``Choice`` per layer (None keeps it dense) and return
    it as a ``Search``; optionally ``revise`` it once the fitted model exists and describe its
    ``outcome``. Only a policy that ``chooses_methods`` takes several candidates per layer."""

    uses_statistics = False
    chooses_methods = False
    measures_speed = False  # times the model, on the compression's example input

    def check(self, method: Method, geometries: dict[str, Geometry]) -> None:
        """Refuse, before any work, what cannot be done (default: nothing to check)."""

    def choose(self, problem: RankProblem) -> Search:
        raise NotImplementedError

    def revise(self, search: Search, dense: nn.Module, approx: nn.Module) -> Search | None:
        """A new search once ``approx`` (the model fitted to ``search``) has been measured, or
        None to keep ``search`` (default: keep)."""
        return None

    def outcome(self, search: Search, dense: nn.Module, approx: nn.Module) -> Outcome | None:
        """What the fitted model measured against the policy's aim (default: nothing to say)."""
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

    def choose(self, problem: RankProblem) -> Search:
        return Search({name: Choice(problem.method_of(name), self.rank_of(name)) for name in problem.layers})

    def describe(self) -> dict[str, Any]:
        ranks = self.ranks if isinstance(self.ranks, dict) else {"all": self.ranks}
        return {"policy": "fixed", "ranks": {name: list(r) if isinstance(r, tuple) else r for name, r in ranks.items()}}


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

    def choose(self, problem: RankProblem) -> Search:
        dense = self._measure(problem.model)
        share = self.points / 100 / len(problem.layers)
        ranks = {}
        for name in problem.layers:
            method = problem.method_of(name)
            low, high = 1, method.max_rank(problem.geometries[name])
            while low < high:
                middle = (low + high) // 2
                approx = copy.deepcopy(problem.model)
                replace_layer(approx, name, problem.fit(name, Choice(method, middle)).module)
                drop = dense - self._measure(approx)
                problem.report(f"search {name}: rank {middle} -> validation drop {100 * drop:+.2f} points")
                if drop <= share:
                    high = middle
                else:
                    low = middle + 1
            ranks[name] = Choice(method, low)
        return Search(ranks)

    def describe(self) -> dict[str, Any]:
        return {"policy": "accuracy_budget", "points": self.points}
