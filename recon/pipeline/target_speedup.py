"""``TargetSpeedup``: the rank policy that reaches a *measured* whole-model speedup.

Per-layer latency tables (measured, cached) and predicted losses (``recon.pipeline.prediction``)
feed a global allocation under a time budget (``recon.pipeline.allocate``), confirmed by at
most two whole-model timings; layers that do not pay stay dense. The search is returned as a
``SpeedupSearch``; the policy object keeps nothing of it, so one policy can serve many
compressions.
"""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recon.bench.latency import (LatencyCache, LayerLatency, default_cache_path, latencies, layer_latency,
                                 unstable_warning)
from recon.bench.settings import Timing
from recon.bench.placeholders import timing_model
from recon.bench.timing import capture_layer_inputs, spread_until_stable
from recon.errors import ConfigError
from recon.inputs import Batch, size
from recon.methods import Method
from recon.model_checks import check_example
from recon.pipeline.allocate import LayerChoices, allocate
from recon.pipeline.policies import Choice, Outcome, RankPolicy, RankProblem, Search
from recon.pipeline.prediction import (QuickModules, contributions, error_curve, output_change, output_sensitivities,
                                       probe_choice)

OUTCOME_MIN_ROUNDS, OUTCOME_MAX_ROUNDS = 3, 9  # rounds of the final whole-model timing (until they agree)
BOUND_TOLERANCE = 0.1  # a measured output change this much above max_output_change breaks the bound
SMALLEST_SHARE = 0.05  # a layer's share of the measured change counts as at least this fraction of its prediction
CLOSE_ENOUGH = 0.05  # a first allocation measured within this fraction above the aim is kept as it is
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


@dataclass(frozen=True)
class SpeedupSearch(Search):
    """What one TargetSpeedup search found and what ``revise`` and ``outcome`` need of it: each
    layer's choices (time and weighted loss of every candidate), the sample output changes are
    measured on (None without data), the example and timing the model is timed with, the best whole-model speedup the search measured, what
    ``max_layer_loss`` bounded ("output variance", "weight energy" or ""), whether the
    predicted output change was bounded, and where progress goes."""

    choices: dict[str, LayerChoices]
    sample: Batch | None
    example: Batch
    timing: Timing
    best_measured: float
    layer_bound: str
    output_bounded: bool
    report: Callable[[str], None]


class TargetSpeedup(RankPolicy):
    """Ranks whose measured whole-model speedup reaches ``factor``, timed on the compression's
    example input as its ``Timing`` says (``recon.compress(example_input=..., timing=...)``).

    1. Latency tables (``recon.bench.latency``): each layer's dense time and its low-rank
       time over a grid of ranks, on its real input within the example, cached between
       runs (``cache``: True for ``$RECON_CACHE_DIR`` or ``~/.cache/recon``, a file path, or
       False for this run only).
    2. Predicted loss of every rank: the layer's error (output variance lost in data mode,
       weight energy lost in filter mode) times its output sensitivity measured on the data
       with a quick low-rank probe of the layer losing about ``PROBE_LOSS``
       (``recon.pipeline.prediction``; 1 without data). The error is the method's closed
       form at every rank, or, for a method without one (and, with several methods, for one
       whose closed form is not exact), the measured error of its quick fit at the latency
       table's ranks (``prediction.error_curve``). A rank whose error exceeds ``max_layer_loss`` is no
       candidate, and with data no allocation may change the model's output by more than ``max_output_change``
       of its variance (predicted: the summed weighted losses): a target out of reach is then
       missed and reported with the best speedup within those bounds, not met by layers that
       have lost their output.
    3. Allocation (``recon.pipeline.allocate``): the least summed loss whose summed layer
       time meets the budget; keeping a layer dense is one of the choices. With several
       candidate methods per layer (``method="auto"``) every (method, rank) is a choice: one
       table per method, and losses that compare across methods (``prediction.error_curve``).
    4. At most two whole-model timings. The first allocation takes the model's time to be its
       layers' time and aims ``FIRST_OVERSHOOT`` beyond the target (the rest of the model
       makes the whole slower than its layers); its measurement fits ``time = other + kappa *
       layer time`` through the dense and the approximated model, and the second allocation
       aims with that fit, interpolating between two measured points. The
       result is the second if it measures at least the aim, else the first if it does, else
       the faster of the two (``outcome`` says the target was missed).

    The search aims at ``factor * (1 + margin)`` so that a later measurement of the fitted
    model, which scatters by a few percent, still meets ``factor``. ``Timing.backend`` is where
    every timing runs: "torch" (eager, in the memory format ``Timing.channels_last`` names) or
    "onnxruntime" (each module exported to ONNX and run by its CPU provider).

    The older form ``TargetSpeedup(factor, example_input, channels_last=, repeats=, backend=)``
    still works for one version, with a DeprecationWarning; ``compress`` then takes the example
    and timing from it (and refuses a ``Timing`` that says otherwise).
    """

    uses_statistics = True
    chooses_methods = True
    measures_speed = True

    def __init__(self, factor: float, example_input: torch.Tensor | None = None, channels_last: bool | None = None,
                 *, margin: float = 0.03, cache: str | Path | bool = True, max_layer_loss: float | None = 0.3,
                 max_output_change: float | None = 0.1, repeats: int | None = None,
                 backend: str | None = None) -> None:
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 1):
            raise ConfigError(f"the target speedup must be a number > 1, got {factor!r}")
        if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
            raise ConfigError(f"margin must be a finite number >= 0, got {margin!r}")
        self.legacy = _legacy_timing(example_input, channels_last=channels_last, repeats=repeats, backend=backend)
        if not isinstance(cache, bool) and (not isinstance(cache, (str, os.PathLike)) or Path(cache).is_dir()):
            raise ConfigError(f"cache is True (the default file), False (this run only) or the path of a JSON file, "
                              f"got {'the folder ' if isinstance(cache, (str, os.PathLike)) else ''}{cache!r}")
        if max_output_change is not None and not max_output_change > 0:
            raise ConfigError(f"max_output_change must be a number > 0 or None, got {max_output_change!r}")
        if max_layer_loss is not None and not 0 < max_layer_loss <= 1:
            raise ConfigError(f"max_layer_loss is a fraction of a layer's output variance (data mode) or weight "
                              f"energy (filter mode) in (0, 1], or None; got {max_layer_loss!r}")
        self.factor, self.margin, self.cache, self.max_layer_loss = float(factor), margin, cache, max_layer_loss
        self.max_output_change = max_output_change

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

    def choose(self, problem: RankProblem) -> SpeedupSearch:
        if problem.sample is not None and size(problem.sample) < 2:
            raise ConfigError("TargetSpeedup measures each layer's sensitivity on how the data varies, and the data "
                              "holds one sample: give more samples (up to 256 are used)")
        if problem.example is None:
            raise ConfigError("TargetSpeedup times the model on an example input: give data or example_input")
        example, timing = problem.example, problem.timing
        inputs = problem.layer_inputs or capture_layer_inputs(problem.model, problem.layers, example)
        cache = LatencyCache(default_cache_path() if self.cache is True else Path(self.cache) if self.cache else None)
        tables = {name: {method: layer_latency(method, problem.model.get_submodule(name), inputs[name],
                                               timing.channels_last, cache, backend=timing.backend)
                         for method in problem.methods[name]} for name in problem.layers}
        cache.save()
        if cache.unstable:
            problem.report(unstable_warning(cache.unstable.values()))
        quick = QuickModules(problem)
        several = len({method for candidates in problem.methods.values() for method in candidates}) > 1
        curves = {name: {method: error_curve(problem, name, method, tables[name][method].ranks, quick, several)
                         for method in problem.methods[name]} for name in problem.layers}
        weights = ({name: 1.0 for name in problem.layers} if problem.sample is None else output_sensitivities(
            problem.model, {name: quick.module(name, *probe_choice(curves[name])) for name in problem.layers},
            problem.sample))
        layer_bound = "" if self.max_layer_loss is None else (
            "weight energy" if problem.moments is None else "output variance")
        output_bounded = problem.sample is not None and self.max_output_change is not None
        choices = {name: self._choices(curves[name], tables[name], weights[name]) for name in problem.layers}
        total = lambda picked, field: sum(float(getattr(choices[n], field)[choices[n].index(o)])
                                          for n, o in picked.items())
        aim, dense_layers = self.factor * (1 + self.margin), sum(c.seconds[0] for c in choices.values())

        def measure(picked: dict[str, Choice | None], label: str) -> tuple[float, float]:
            timed = timing_model(problem.model, {name: quick.module(name, *choice)
                                                 for name, choice in picked.items() if choice})
            dense_time, low_time = _time([problem.model, timed], example, timing)
            problem.report(f"rank allocation {label}: layers predicted {dense_layers / total(picked, 'seconds'):.2f}x, "
                           f"output change predicted {total(picked, 'losses'):.4f}, "
                           f"whole model measured {dense_time / low_time:.2f}x -> {_describe(picked)}")
            return dense_time, low_time

        # time and loss swapped: the fastest allocation whose predicted output change is within the bound
        swapped = {name: LayerChoices(c.options, c.losses, c.seconds) for name, c in choices.items()}

        def pick(budget: float) -> dict[str, Choice | None]:
            picked = allocate(choices, budget)
            if output_bounded and total(picked, "losses") > self.max_output_change:
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
        return SpeedupSearch(final, choices, problem.sample, example, timing, max(measured.values()), layer_bound,
                             output_bounded, problem.report)

    def revise(self, search: Search, dense: nn.Module, approx: nn.Module) -> SpeedupSearch | None:
        """Trade rank back when the fitted model breaks ``max_output_change``.

        The summed per-layer prediction misses how a deep (residual) stack compounds errors, so
        the fitted model's output change is measured on the sensitivity sample, and each
        replaced layer's share of it in context (``sensitivity.contributions``: the change that
        goes away when that layer alone is dense again). Every layer's predicted losses are
        rescaled to its share, and the fastest allocation within the bound, scaled by what the
        shares leave unexplained, is the new one: rank goes back where the measured network
        is most sensitive. None when the bound holds or nothing would change."""
        if not isinstance(search, SpeedupSearch) or not search.output_bounded:
            return None
        replaced = [name for name, choice in search.picked.items() if choice is not None]
        bound = self.max_output_change
        if not replaced or output_change(dense, approx, search.sample) <= bound * (1 + BOUND_TOLERANCE):
            return None
        change, shares = contributions(dense, approx, replaced, search.sample)
        choices = dict(search.choices)
        for name in replaced:
            layer = choices[name]
            predicted = float(layer.losses[layer.index(search.picked[name])])
            scale = max(shares[name], SMALLEST_SHARE * predicted) / predicted if predicted > 0 else 1.0
            choices[name] = LayerChoices(layer.options, layer.seconds, layer.losses * scale)
        explained = sum(max(shares[name], 0.0) for name in replaced)
        swapped = {name: LayerChoices(c.options, c.losses, c.seconds) for name, c in choices.items()}
        revised = allocate(swapped, bound * min(explained / change, 1.0))
        search.report(f"rank allocation revised: fitted model measured output change {change:.4f} > "
                      f"max_output_change {bound:g}; ranks traded back -> {_describe(revised)}")
        return None if revised == search.picked else dataclasses.replace(search, picked=revised, choices=choices)

    def outcome(self, search: Search, dense: nn.Module, approx: nn.Module) -> Outcome:
        """The fitted model timed against the dense one in rounds until they agree
        (``spread_until_stable``; the first three rounds cost one timing of ``Timing.repeats``
        calls); the target counts as met only when the lower end of the middle rounds
        (``Spread.low``) reaches it."""
        timing = search.timing
        per_round = max(1, math.ceil(timing.repeats / OUTCOME_MIN_ROUNDS))
        spread = spread_until_stable(lambda: _time([dense, approx], search.example, timing, per_round),
                                     OUTCOME_MIN_ROUNDS, OUTCOME_MAX_ROUNDS)
        measured = spread.median
        runtime = "" if timing.backend == "torch" else f", {timing.backend}"
        where = f"batch {size(search.example)}, {timing.layout}{runtime}, fitted bases"
        change = None
        if search.output_bounded:
            change = output_change(dense, approx, search.sample)
            where += f"; output change measured {change:.4f} of its variance (max_output_change {self.max_output_change:g})"
        if spread.low >= self.factor:
            return Outcome(self.factor, measured, True, f"target {self.factor:.2f}x met: measured {spread.describe()} "
                           f"({where})", change, spread)
        slowest = "; the lower end of its rounds is below the target" if measured >= self.factor else ""
        return Outcome(self.factor, measured, False,
                       f"target {self.factor:.2f}x missed: measured {spread.describe()}{slowest} ({where}); the best the "
                       f"rank allocation measured was {search.best_measured:.2f}x" + self._bounds(search), change, spread)

    def _bounds(self, search: SpeedupSearch) -> str:
        """The quality bounds ``search`` kept to, as the end of a sentence."""
        bounds = [f"no layer losing more than {self.max_layer_loss:g} of its {search.layer_bound} (max_layer_loss)"
                  ] if search.layer_bound else []
        bounds += [f"the model's output changing by at most {self.max_output_change:g} of its variance "
                   "(max_output_change)"] if search.output_bounded else []
        return f" within the quality bounds (predicted): {'; '.join(bounds)}" if bounds else ""

    def describe(self) -> dict[str, Any]:
        return {"policy": "target_speedup", "factor": self.factor, "margin": self.margin,
                "max_layer_loss": self.max_layer_loss, "max_output_change": self.max_output_change,
                "allocation": "latency tables, Lagrangian"}


def _time(models: list[nn.Module], example: Batch, timing: Timing, repeats: int | None = None) -> list[float]:
    """Seconds per call of each model on ``example``, side by side, as ``timing`` says."""
    return latencies(timing.backend)(models, example, repeats or timing.repeats, channels_last=timing.channels_last)


def _legacy_timing(example_input: torch.Tensor | None, **timing: Any) -> tuple[torch.Tensor | None, dict[str, Any]] | None:
    """The example and the timing settings of the deprecated ``TargetSpeedup(factor,
    example_input, channels_last=, repeats=, backend=)``, checked; None when none was given."""
    given = {name: value for name, value in timing.items() if value is not None}
    if example_input is None and not given:
        return None
    warnings.warn("TargetSpeedup(factor, example_input, channels_last=, repeats=, backend=) is deprecated: give "
                  "compress(example_input=..., timing=recon.Timing(batch, channels_last, backend, repeats))",
                  DeprecationWarning, stacklevel=3)
    if example_input is not None:
        check_example(example_input, "TargetSpeedup's example input")
        given["batch"] = len(example_input)
    Timing(**given)  # checks the values
    return example_input, given


