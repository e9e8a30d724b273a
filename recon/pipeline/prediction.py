"""Predicted loss: what each layer's error at each rank costs at the model's output.

A layer's error at a rank is its method's closed form (``rank_errors``) or the measured error
of a quick fit (``QuickModules``, ``error_curve``). A layer whose reconstruction loses a
fraction e of its output variance changes the model's
output by about s * e of the output's variance, to first order; s, the layer's sensitivity,
differs by orders of magnitude between layers (an early layer's error passes through every
later one). It is measured with the kind of error that rank allocation will cause: one
layer at a time is replaced by a probe (``probe_choice``), a low-rank module of that layer,
and s is the
relative change of the model's output over the relative change of the layer's output. White
noise of the same size is a poor probe: it spreads over every direction, while a truncation
removes the weak directions, which later layers can amplify (on the bundled model noise put
conv5's sensitivity so low that an allocation cut it to rank 2 and accuracy fell to 24%).
No labels; about half a forward pass per layer (``Suffixes``: the network in front of a
layer's block runs once for all layers). Once a model is fitted, ``output_change`` and
``contributions`` measure what the prediction summed per layer misses: how the network
compounds the errors.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from recon.errors import FitError
from recon.inputs import Batch, run
from recon.methods import Method
from recon.nn import LowRankModule
from recon.pipeline.blocks import find_blocks
from recon.pipeline.fitting import approximation_error, to_numpy
from recon.pipeline.outputs import model_output, relative_change
from recon.pipeline.policies import RankProblem
from recon.pipeline.propagate import Propagation, Untraceable

PROBE_LOSS = 0.05  # the sensitivity probe of a layer loses about this much


class Suffixes:
    """``model``'s output on the batch ``sample``, computed from the block holding one of
    ``layers`` onwards: the graph before that block runs once for all the layers, visited in
    ``order`` (``recon.pipeline.propagate``), so probing every layer costs about half a pass
    each instead of a whole one. A model that cannot be walked that way (untraceable, several
    inputs, a layer also called outside its block) runs whole every time: same values."""

    def __init__(self, model: nn.Module, layers: list[str], sample: Batch) -> None:
        self.model, self.sample = model, sample
        self.block_of = {layer: block for block, inside in find_blocks(model, layers).items() for layer in inside}
        self.walk = self._walk(layers) if isinstance(sample, torch.Tensor) else None
        position = (lambda layer: 0) if self.walk is None else (
            lambda layer: self.walk.block_node[self.block_of[layer]])
        self.order = sorted(layers, key=position)

    def _walk(self, layers: list[str]) -> Propagation | None:
        try:
            walk = Propagation({"model": self.model}, [self.sample], list(dict.fromkeys(self.block_of.values())))
        except Untraceable:
            return None
        called = [str(node.target) for node in walk.nodes if node.op == "call_module"]
        overlaps = lambda layer, target: (target == layer or target.startswith(layer + ".")
                                          or layer.startswith(target + "."))
        if any(sum(overlaps(layer, target) for target in called) != 1 for layer in layers):
            return None
        return walk

    def output(self, layer: str | None = None) -> Any:
        """The output, from ``layer``'s block onwards (None: from where the walk stands, at
        first the input); layers must come in ``order``."""
        if self.walk is None:
            return run(self.model, self.sample)
        if layer is not None:
            self.walk.advance(self.block_of[layer])
        return self.walk.rest("model")


@torch.inference_mode()
def output_sensitivities(model: nn.Module, probes: dict[str, nn.Module], sample: Batch) -> dict[str, float]:
    """Per named layer: the relative change of ``model``'s output on the batch ``sample``
    divided by the relative change of the layer's output, when ``probes[name]`` computes
    that layer's output instead (0 for a probe that changes nothing)."""
    suffixes = Suffixes(model, list(probes), sample)
    reference = model_output(suffixes.output()).double()
    sensitivities = {}
    for name in suffixes.order:
        changes = []

        def replace(module, args, output, probe=probes[name]):
            replaced = probe(*args)
            changes.append(float(relative_change(replaced.double(), output.double())))
            return replaced

        hook = model.get_submodule(name).register_forward_hook(replace)
        try:
            change = float(relative_change(model_output(suffixes.output(name)).double(), reference))
        finally:
            hook.remove()
        sensitivities[name] = change / changes[0] if changes[0] > 0 else 0.0
    return {name: sensitivities[name] for name in probes}


@torch.inference_mode()
def output_change(dense: nn.Module, approx: nn.Module, sample: Batch) -> float:
    """The relative change of ``approx``'s output from ``dense``'s on ``sample``."""
    return float(relative_change(model_output(run(approx, sample)).double(), model_output(run(dense, sample)).double()))


@torch.inference_mode()
def contributions(dense: nn.Module, approx: nn.Module, layers: list[str], sample: Batch) -> tuple[float, dict[str, float]]:
    """(``output_change`` of ``approx``, and per named layer the part of it that goes away when
    that layer alone computes its dense output again): each layer's share of the error as the
    approximated network really compounds it."""
    reference = model_output(run(dense, sample)).double()
    suffixes = Suffixes(approx, layers, sample)
    change = float(relative_change(model_output(suffixes.output()).double(), reference))
    shares = {}
    for name in suffixes.order:
        original = dense.get_submodule(name)
        hook = approx.get_submodule(name).register_forward_hook(lambda module, args, output, original=original:
                                                                original(*args))
        try:
            shares[name] = change - float(relative_change(model_output(suffixes.output(name)).double(), reference))
        finally:
            hook.remove()
    return change, {name: shares[name] for name in layers}


class QuickModules:
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


def rank_errors(problem: RankProblem, name: str, method: Method) -> np.ndarray | None:
    """The method's closed-form error of every rank 1..max_rank of a layer, or None."""
    top = method.max_rank(problem.geometries[name])
    covariance = None if problem.moments is None else problem.moments[name].covariance()
    errors = method.rank_errors(problem.weights[name], covariance, problem.geometries[name].groups)
    if errors is not None and len(errors) != top:
        raise FitError(f"{method.name}.rank_errors gave {len(errors)} errors for layer {name!r}, "
                       f"expected one per rank 1..{top}")
    return None if errors is None else np.clip(np.asarray(errors, float), 0, None)


def probe_rank(ranks: np.ndarray, errors: np.ndarray) -> int:
    """The rank of the module that measures a layer's sensitivity: the smallest predicted to
    lose at most ``PROBE_LOSS``, else the largest."""
    small = np.flatnonzero(errors <= PROBE_LOSS)
    return int(ranks[small[0]] if len(small) else ranks[-1])


def error_curve(problem: RankProblem, name: str, method: Method, table_ranks: list[int], quick: QuickModules,
                several: bool) -> tuple[np.ndarray, np.ndarray]:
    """(ranks, predicted error of each) of one method on a layer.

    The closed form at every rank when there is one and only one method in the problem
    (a bound's bias is shared by every layer, so ranks still compare). Otherwise the
    measured error of the quick fit at ``table_ranks`` (the latency table's): a method without a
    closed form has nothing else, and among ``several`` methods a bound would favour those
    whose bound is lower (an exact closed form is kept)."""
    errors = None if several and not method.exact_rank_errors else rank_errors(problem, name, method)
    if errors is not None:
        return np.arange(1, method.max_rank(problem.geometries[name]) + 1), errors
    ranks = np.array(table_ranks)
    return ranks, np.array([quick.error(name, method, int(rank)) for rank in ranks])


def probe_choice(curves: dict[Method, tuple[np.ndarray, np.ndarray]]) -> tuple[Method, int]:
    """(method, rank) of a layer's sensitivity probe: of the first candidate with a finite
    predicted error (a failed quick fit has an infinite one), at its finite ranks."""
    usable = [(m, c) for m, c in curves.items() if np.isfinite(c[1]).any()]
    if not usable:
        raise FitError("every quick fit of the layer failed: no candidate to measure its sensitivity with")
    method, (ranks, errors) = usable[0]
    finite = np.isfinite(errors)
    return method, probe_rank(ranks[finite], errors[finite])
