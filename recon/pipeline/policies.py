"""Rank policies: how many bases each layer gets (and, for TargetSpeedup, by which method).

* ``Fixed(48)`` or ``Fixed({"conv2": 48, "conv3": 64})`` (``compress`` also takes the int or
  dict itself): given ranks, checked against each layer before any work.
* ``TargetSpeedup(2.5, example_input)``: ranks whose *measured* whole-model speedup on
  ``example_input`` reaches the target: per-layer latency tables (measured, cached) and
  closed-form errors weighted by measured sensitivities feed a global allocation under a
  time budget, confirmed by at most two whole-model timings. Layers that do not pay stay dense.
  The only policy that also chooses the method per layer (``method="auto"``).
* ``AccuracyBudget(0.5, metric)``: per layer, bisection on the rank for the smallest one
  whose replacement alone costs at most its share (budget / layers) of ``metric``.

A policy's ``choose`` sees a ``RankProblem`` and gives each layer a ``Choice(method, rank)``
or None (dense); ``outcome`` may measure the finished model.
"""
from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from recon.bench.latency import (LatencyCache, LayerLatency, check_backend, default_cache_path, latencies,
                                 layer_latency, unstable_warning)
from recon.bench.placeholders import timing_model
from recon.bench.timing import Spread, capture_layer_inputs, spread_until_stable
from recon.errors import ConfigError, FitError
from recon.methods import Method
from recon.model_checks import check_example
from recon.nn import Geometry, LowRankModule
from recon.pipeline.allocate import LayerChoices, allocate
from recon.pipeline.fitting import approximation_error, to_numpy
from recon.pipeline.sensitivity import contributions, output_change, output_sensitivities
from recon.record import LayerRecord
from recon.surgery import replace_layer
from solvers.objectives import Moments

WHOLE_MODEL_REPEATS = 50  # timed calls per model when a whole model is measured
OUTCOME_MIN_ROUNDS, OUTCOME_MAX_ROUNDS = 3, 9  # rounds of the final whole-model timing (until they agree)


class Choice(NamedTuple):
    """What a policy gives a layer: a method and its rank."""

    method: Method
    rank: Any


@dataclass
class RankProblem:
    """What a policy may use: the dense model (on the working device), the layers in model
    order, each layer's candidate methods (one unless the policy chooses methods), their
    geometries and weights, symmetric statistics when the fit is in data mode, ``sample``, a
    batch of real inputs (None without data), a way to fit one layer to a ``Choice``, and a
    way to report progress."""

    model: nn.Module
    methods: dict[str, tuple[Method, ...]]
    layers: list[str]
    geometries: dict[str, Geometry]
    weights: dict[str, np.ndarray]
    moments: dict[str, Moments] | None
    sample: torch.Tensor | None
    fit: Callable[[str, Choice], LayerRecord]
    report: Callable[[str], None]

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


class RankPolicy:
    """Base of the policies: ``choose`` a ``Choice`` per layer (None keeps it dense), optionally
    ``outcome``. Only a policy that ``chooses_methods`` takes several candidates per layer."""

    uses_statistics = False
    chooses_methods = False

    def check(self, method: Method, geometries: dict[str, Geometry]) -> None:
        """Refuse, before any work, what cannot be done (default: nothing to check)."""

    def choose(self, problem: RankProblem) -> dict[str, Choice | None]:
        raise NotImplementedError

    def revise(self, dense: nn.Module, approx: nn.Module) -> dict[str, Choice | None] | None:
        """A new allocation once ``approx`` (the fitted model) has been measured, or None to keep
        it (default: keep)."""
        return None

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

    def choose(self, problem: RankProblem) -> dict[str, Choice | None]:
        return {name: Choice(problem.method_of(name), self.rank_of(name)) for name in problem.layers}

    def describe(self) -> dict[str, Any]:
        ranks = self.ranks if isinstance(self.ranks, dict) else {"all": self.ranks}
        return {"policy": "fixed", "ranks": {name: list(r) if isinstance(r, tuple) else r for name, r in ranks.items()}}


BOUND_TOLERANCE = 0.1  # a measured output change this much above max_output_change breaks the bound
SMALLEST_SHARE = 0.05  # a layer's share of the measured change counts as at least this fraction of its prediction
CLOSE_ENOUGH = 0.05  # a first allocation measured within this fraction above the aim is kept as it is
PROBE_LOSS = 0.05  # the sensitivity probe of a layer loses about this much
FIRST_OVERSHOOT = 1.15  # the first allocation's layers aim this much beyond the target


def _calibrate(dense_model: float, dense_layers: float, low_model: float, low_layers: float) -> tuple[float, float]:
    """(kappa, other) of ``model time = other + kappa * summed layer time`` through the dense
    and the approximated measurements; kappa 1 when the two points cannot tell it."""
    if dense_layers - low_layers > 1e-9 * dense_layers and dense_model > low_model:
        kappa = (dense_model - low_model) / (dense_layers - low_layers)
        other = dense_model - kappa * dense_layers
        if other >= 0:
            return kappa, other
        return dense_model / dense_layers, 0.0
    return 1.0, max(dense_model - dense_layers, 0.0)


def _describe(picked: dict[str, Choice | None]) -> str:
    """An allocation as the progress line shows it: name -> rank, or method:rank with several methods."""
    methods = {choice.method.name for choice in picked.values() if choice}
    label = lambda c: "dense" if c is None else (str(c.rank) if len(methods) <= 1 else f"{c.method.name}:{c.rank}")
    return "{" + ", ".join(f"{name}: {label(choice)}" for name, choice in picked.items()) + "}"


class _QuickModules:
    """Quick-fit modules of a problem's layers (``Method.quick_fit``), made once each: they are
    timed in whole-model measurements, probe sensitivities, and measure errors."""

    def __init__(self, problem: RankProblem) -> None:
        self.problem = problem
        self.modules: dict[tuple[str, str, int], LowRankModule] = {}

    def module(self, name: str, method: Method, rank: int) -> LowRankModule:
        """The quick-fit module of ``method`` at ``rank`` for layer ``name`` (made on first use)."""
        if (name, method.name, rank) not in self.modules:
            layer, geometry = self.problem.model.get_submodule(name), self.problem.geometries[name]
            fitted = method.quick_fit(self.problem.weights[name], rank, geometry.groups)
            bias = None if layer.bias is None else to_numpy(layer.bias)
            self.modules[name, method.name, rank] = method.build(geometry, fitted, bias).to(layer.weight.device,
                                                                                           layer.weight.dtype)
        return self.modules[name, method.name, rank]

    def error(self, name: str, method: Method, rank: int) -> float:
        """The quick fit's error, of the layer's outputs with statistics, else of its weights
        (infinite when the fit fails)."""
        try:
            w_hat = to_numpy(self.module(name, method, rank).dense_weight())
        except FitError:
            return math.inf
        layer = self.problem.model.get_submodule(name)
        moments = None if self.problem.moments is None else self.problem.moments[name]
        return approximation_error(self.problem.weights[name], None if layer.bias is None else to_numpy(layer.bias),
                                   w_hat, moments, self.problem.geometries[name].groups)


@dataclass(frozen=True)
class _Search:
    """What a bounded TargetSpeedup search leaves for ``revise``: each layer's choices, the
    allocation made, the sample the output change is measured on."""

    choices: dict[str, LayerChoices]
    final: dict[str, Choice | None]
    sample: torch.Tensor


class TargetSpeedup(RankPolicy):
    """Ranks whose measured whole-model speedup on ``example_input`` reaches ``factor``.

    1. Latency tables (``recon.bench.latency``): each layer's dense time and its low-rank
       time over a grid of ranks, on its real input within ``example_input``, cached between
       runs (``cache``: True for ``$RECON_CACHE_DIR`` or ``~/.cache/recon``, a file path, or
       False for this run only).
    2. Predicted loss of every rank: the layer's error (output variance lost in data mode,
       weight energy lost in filter mode) times its output sensitivity measured on the data
       with a quick low-rank probe of the layer losing about ``PROBE_LOSS``
       (``recon.pipeline.sensitivity``; 1 without data). The error is the method's closed
       form at every rank, or, for a method without one (and, with several methods, for one
       whose closed form is not exact), the measured error of its quick fit at the latency
       table's ranks (``_curve``). A rank whose error exceeds ``max_layer_loss`` is no
       candidate, and with data no allocation may change the model's output by more than ``max_output_change``
       of its variance (predicted: the summed weighted losses): a target out of reach is then
       missed and reported with the best speedup within those bounds, not met by layers that
       have lost their output.
    3. Allocation (``recon.pipeline.allocate``): the least summed loss whose summed layer
       time meets the budget; keeping a layer dense is one of the choices. With several
       candidate methods per layer (``method="auto"``) every (method, rank) is a choice: one
       table per method, and losses that compare across methods (``_curve``).
    4. At most two whole-model timings. The first allocation takes the model's time to be its
       layers' time and aims ``FIRST_OVERSHOOT`` beyond the target (the rest of the model
       makes the whole slower than its layers); its measurement fits ``time = other + kappa *
       layer time`` through the dense and the approximated model, and the second allocation
       aims with that fit, interpolating between two measured points. The
       result is the second if it measures at least the aim, else the first if it does, else
       the faster of the two (``outcome`` says the target was missed).

    The search aims at ``factor * (1 + margin)`` so that a later measurement of the fitted
    model, which scatters by a few percent, still meets ``factor``. ``backend`` is where every
    timing runs: "torch" (eager, in the memory format ``channels_last`` names) or
    "onnxruntime" (each module exported to ONNX and run by its CPU provider).
    """

    uses_statistics = True
    chooses_methods = True

    def __init__(self, factor: float, example_input: torch.Tensor, channels_last: bool = False,
                 margin: float = 0.03, repeats: int = WHOLE_MODEL_REPEATS,
                 cache: str | Path | bool = True, max_layer_loss: float | None = 0.3,
                 max_output_change: float | None = 0.1, backend: str = "torch") -> None:
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 1):
            raise ConfigError(f"the target speedup must be a number > 1, got {factor!r}")
        check_example(example_input, "TargetSpeedup's example input")
        if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
            raise ConfigError(f"margin must be a finite number >= 0, got {margin!r}")
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ConfigError(f"repeats must be a whole number >= 1, got {repeats!r}")
        check_backend(backend)
        if not isinstance(cache, bool) and (not isinstance(cache, (str, os.PathLike)) or Path(cache).is_dir()):
            raise ConfigError(f"cache is True (the default file), False (this run only) or the path of a JSON file, "
                              f"got {'the folder ' if isinstance(cache, (str, os.PathLike)) else ''}{cache!r}")
        if backend == "onnxruntime" and channels_last:
            raise ConfigError("channels_last is a torch memory format; the onnxruntime backend chooses its own layouts")
        if max_output_change is not None and not max_output_change > 0:
            raise ConfigError(f"max_output_change must be a number > 0 or None, got {max_output_change!r}")
        if max_layer_loss is not None and not 0 < max_layer_loss <= 1:
            raise ConfigError(f"max_layer_loss is a fraction of a layer's output variance (data mode) or weight "
                              f"energy (filter mode) in (0, 1], or None; got {max_layer_loss!r}")
        self.factor, self.example_input, self.channels_last = float(factor), example_input, channels_last
        self.margin, self.repeats, self.cache, self.max_layer_loss = margin, repeats, cache, max_layer_loss
        self.max_output_change, self.backend = max_output_change, backend
        self.best_searched = 0.0  # the best whole-model speedup the last search measured
        self.bounded = ""  # what the last search bounded by max_layer_loss ("output variance", "weight energy")
        self.output_bounded = False  # whether it bounded the predicted output change (with data)
        self._search: _Search | None = None  # what revise needs of the last bounded search
        self._report: Callable[[str], None] = print

    @staticmethod
    def _errors(problem: RankProblem, name: str, method: Method) -> np.ndarray | None:
        """The method's closed-form error of every rank 1..max_rank of a layer, or None."""
        top = method.max_rank(problem.geometries[name])
        covariance = None if problem.moments is None else problem.moments[name].covariance()
        errors = method.rank_errors(problem.weights[name], covariance, problem.geometries[name].groups)
        if errors is not None and len(errors) != top:
            raise FitError(f"{method.name}.rank_errors gave {len(errors)} errors for layer {name!r}, "
                           f"expected one per rank 1..{top}")
        return None if errors is None else np.clip(np.asarray(errors, float), 0, None)

    @staticmethod
    def _probe_rank(ranks: np.ndarray, errors: np.ndarray) -> int:
        """The rank of the module that measures a layer's sensitivity: the smallest predicted to
        lose at most ``PROBE_LOSS``, else the largest."""
        small = np.flatnonzero(errors <= PROBE_LOSS)
        return int(ranks[small[0]] if len(small) else ranks[-1])

    def _curve(self, problem: RankProblem, name: str, method: Method, table: LayerLatency, quick: _QuickModules,
               several: bool) -> tuple[np.ndarray, np.ndarray]:
        """(ranks, predicted error of each) of one method on a layer.

        The closed form at every rank when there is one and only one method in the problem
        (a bound's bias is shared by every layer, so ranks still compare). Otherwise the
        measured error of the quick fit at the latency table's ranks: a method without a
        closed form has nothing else, and among ``several`` methods a bound would favour those
        whose bound is lower (an exact closed form is kept)."""
        errors = None if several and not method.exact_rank_errors else self._errors(problem, name, method)
        if errors is not None:
            return np.arange(1, method.max_rank(problem.geometries[name]) + 1), errors
        ranks = np.array(table.ranks)
        return ranks, np.array([quick.error(name, method, int(rank)) for rank in ranks])

    def _choices(self, curves: dict[Method, tuple[np.ndarray, np.ndarray]],
                 tables: dict[Method, LayerLatency], weight: float) -> LayerChoices:
        """Dense and every candidate (method, rank) of one layer, with its time and weighted loss.
        Each method's times are scaled to the first table's dense time: the tables were timed
        in separate rounds, which drift apart."""
        reference = next(iter(tables.values())).dense
        options: list[Choice | None] = [None]
        seconds, losses = [reference], [0.0]
        for method, (ranks, errors) in curves.items():
            allowed = np.isfinite(errors) & (errors <= (np.inf if self.max_layer_loss is None else self.max_layer_loss))
            scale = reference / tables[method].dense
            options += [Choice(method, int(rank)) for rank in ranks[allowed]]
            seconds += list(scale * np.asarray(tables[method].at(ranks[allowed]), float))
            losses += list(weight * errors[allowed])
        return LayerChoices(tuple(options), np.array(seconds), np.array(losses))

    def choose(self, problem: RankProblem) -> dict[str, Choice | None]:
        self._report = problem.report
        if problem.sample is not None and len(problem.sample) < 2:
            raise ConfigError("TargetSpeedup measures each layer's sensitivity on how the data varies, and the data "
                              "holds one sample: give more samples (up to 256 are used)")
        parameter = next(problem.model.parameters())
        example = self.example_input.to(parameter.device, parameter.dtype)
        try:
            inputs = capture_layer_inputs(problem.model, problem.layers, example)
        except RuntimeError as err:
            raise ConfigError(f"the model failed on TargetSpeedup's example input of shape {tuple(example.shape)}: "
                              f"{err}") from err
        cache = LatencyCache(default_cache_path() if self.cache is True else Path(self.cache) if self.cache else None)
        tables = {name: {method: layer_latency(method, problem.model.get_submodule(name), inputs[name],
                                               self.channels_last, cache, backend=self.backend)
                         for method in problem.methods[name]} for name in problem.layers}
        cache.save()
        if cache.unstable:
            self._report(unstable_warning(cache.unstable.values()))
        quick = _QuickModules(problem)
        several = len({method for candidates in problem.methods.values() for method in candidates}) > 1
        curves = {name: {method: self._curve(problem, name, method, tables[name][method], quick, several)
                         for method in problem.methods[name]} for name in problem.layers}
        weights = ({name: 1.0 for name in problem.layers} if problem.sample is None else output_sensitivities(
            problem.model, {name: quick.module(name, *self._probe(curves[name])) for name in problem.layers},
            problem.sample))
        self.bounded = "" if self.max_layer_loss is None else (
            "weight energy" if problem.moments is None else "output variance")
        self.output_bounded = problem.sample is not None and self.max_output_change is not None
        choices = {name: self._choices(curves[name], tables[name], weights[name]) for name in problem.layers}
        total = lambda picked, field: sum(float(getattr(choices[n], field)[choices[n].index(o)])
                                          for n, o in picked.items())
        aim, dense_layers = self.factor * (1 + self.margin), sum(c.seconds[0] for c in choices.values())

        def measure(picked: dict[str, Choice | None], label: str) -> tuple[float, float]:
            timed = timing_model(problem.model, {name: quick.module(name, *choice)
                                                 for name, choice in picked.items() if choice})
            dense_time, low_time = self._time([problem.model, timed], example)
            problem.report(f"rank allocation {label}: layers predicted {dense_layers / total(picked, 'seconds'):.2f}x, "
                           f"output change predicted {total(picked, 'losses'):.4f}, "
                           f"whole model measured {dense_time / low_time:.2f}x -> {_describe(picked)}")
            return dense_time, low_time

        # time and loss swapped: the fastest allocation whose predicted output change is within the bound
        swapped = {name: LayerChoices(c.options, c.losses, c.seconds) for name, c in choices.items()}

        def pick(budget: float) -> dict[str, Choice | None]:
            picked = allocate(choices, budget)
            if self.output_bounded and total(picked, "losses") > self.max_output_change:
                picked = allocate(swapped, self.max_output_change)
            return picked

        first = pick(dense_layers / (aim * FIRST_OVERSHOOT))
        dense_time, low_time = measure(first, "1")
        measured = {1: dense_time / low_time}
        final = first
        if not aim <= measured[1] <= aim * (1 + CLOSE_ENOUGH):
            kappa, other = _calibrate(dense_time, dense_layers, low_time, total(first, "seconds"))
            second = pick(max(dense_time / aim - other, 0.0) / kappa)
            if second != first:
                dense_time, low_time = measure(second, "2 (time = other + kappa * layers, fitted to allocation 1)")
                measured[2] = dense_time / low_time
                final = second if measured[2] >= aim or (measured[1] < aim and measured[2] > measured[1]) else first
        self.best_searched = max(measured.values())
        self._search = _Search(choices, final, problem.sample) if self.output_bounded else None
        return final

    def revise(self, dense: nn.Module, approx: nn.Module) -> dict[str, Choice | None] | None:
        """Trade rank back when the fitted model breaks ``max_output_change``.

        The summed per-layer prediction misses how a deep (residual) stack compounds errors, so
        the fitted model's output change is measured on the sensitivity sample, and each
        replaced layer's share of it in context (``sensitivity.contributions``: the change that
        goes away when that layer alone is dense again). Every layer's predicted losses are
        rescaled to its share, and the fastest allocation within the bound, scaled by what the
        shares leave unexplained, is the new one: rank goes back where the measured network
        is most sensitive. None when the bound holds or nothing would change."""
        search = self._search
        if search is None:
            return None
        replaced = [name for name, choice in search.final.items() if choice is not None]
        bound = self.max_output_change
        if not replaced or output_change(dense, approx, search.sample) <= bound * (1 + BOUND_TOLERANCE):
            return None
        change, shares = contributions(dense, approx, replaced, search.sample)
        choices = dict(search.choices)
        for name in replaced:
            layer = choices[name]
            predicted = float(layer.losses[layer.index(search.final[name])])
            scale = max(shares[name], SMALLEST_SHARE * predicted) / predicted if predicted > 0 else 1.0
            choices[name] = LayerChoices(layer.options, layer.seconds, layer.losses * scale)
        explained = sum(max(shares[name], 0.0) for name in replaced)
        swapped = {name: LayerChoices(c.options, c.losses, c.seconds) for name, c in choices.items()}
        revised = allocate(swapped, bound * min(explained / change, 1.0))
        self._report(f"rank allocation revised: fitted model measured output change {change:.4f} > "
                     f"max_output_change {bound:g}; ranks traded back -> {_describe(revised)}")
        self._search = _Search(choices, revised, search.sample)
        return None if revised == search.final else revised

    def _probe(self, curves: dict[Method, tuple[np.ndarray, np.ndarray]]) -> tuple[Method, int]:
        """(method, rank) of a layer's sensitivity probe: of the first candidate with a finite
        predicted error (a failed quick fit has an infinite one), at its finite ranks."""
        usable = [(m, c) for m, c in curves.items() if np.isfinite(c[1]).any()]
        if not usable:
            raise FitError("every quick fit of the layer failed: no candidate to measure its sensitivity with")
        method, (ranks, errors) = usable[0]
        finite = np.isfinite(errors)
        return method, self._probe_rank(ranks[finite], errors[finite])

    def _time(self, models: list[nn.Module], example: torch.Tensor, repeats: int | None = None) -> list[float]:
        """Seconds per call of each model on ``example``, side by side, on the policy's backend."""
        return latencies(self.backend)(models, example, repeats or self.repeats, channels_last=self.channels_last)

    def outcome(self, dense: nn.Module, approx: nn.Module) -> Outcome:
        """The fitted model timed against the dense one in rounds until they agree
        (``spread_until_stable``; the first three rounds cost one timing of ``repeats`` calls);
        the target counts as met only when the lower end of the middle rounds (``Spread.low``)
        reaches it."""
        parameter = next(dense.parameters())
        example = self.example_input.to(parameter.device, parameter.dtype)
        per_round = max(1, math.ceil(self.repeats / OUTCOME_MIN_ROUNDS))
        spread = spread_until_stable(lambda: self._time([dense, approx], example, per_round), OUTCOME_MIN_ROUNDS,
                                     OUTCOME_MAX_ROUNDS)
        measured = spread.median
        layout = "channels_last" if self.channels_last else "NCHW"
        runtime = "" if self.backend == "torch" else f", {self.backend}"
        where = f"batch {len(self.example_input)}, {layout}{runtime}, fitted bases"
        change = None
        if self._search is not None:
            change = output_change(dense, approx, self._search.sample)
            where += f"; output change measured {change:.4f} of its variance (max_output_change {self.max_output_change:g})"
        if spread.low >= self.factor:
            return Outcome(self.factor, measured, True, f"target {self.factor:.2f}x met: measured {spread.describe()} "
                           f"({where})", change, spread)
        slowest = "; the lower end of its rounds is below the target" if measured >= self.factor else ""
        return Outcome(self.factor, measured, False,
                       f"target {self.factor:.2f}x missed: measured {spread.describe()}{slowest} ({where}); the best the "
                       f"rank allocation measured was {self.best_searched:.2f}x" + self._bounds(), change, spread)

    def _bounds(self) -> str:
        """The quality bounds the last search kept to, as the end of a sentence."""
        bounds = [f"no layer losing more than {self.max_layer_loss:g} of its {self.bounded} (max_layer_loss)"
                  ] if self.bounded else []
        bounds += [f"the model's output changing by at most {self.max_output_change:g} of its variance "
                   "(max_output_change)"] if self.output_bounded else []
        return f" within the quality bounds (predicted): {'; '.join(bounds)}" if bounds else ""

    def describe(self) -> dict[str, Any]:
        return {"policy": "target_speedup", "factor": self.factor, "batch": len(self.example_input),
                "input_shape": list(self.example_input.shape[1:]), "channels_last": self.channels_last,
                "margin": self.margin, "repeats": self.repeats, "max_layer_loss": self.max_layer_loss,
                "max_output_change": self.max_output_change, "backend": self.backend,
                "allocation": "latency tables, Lagrangian"}


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

    def choose(self, problem: RankProblem) -> dict[str, Choice | None]:
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
        return ranks

    def describe(self) -> dict[str, Any]:
        return {"policy": "accuracy_budget", "points": self.points}
