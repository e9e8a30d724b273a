"""Fit one layer with a method and describe the result: the step every policy and the
pipeline share. Torch tensors cross to the solvers here, and only here, as float64 NumPy."""
from __future__ import annotations

import math
import time
import warnings
from collections import defaultdict
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from recon import methods
from recon.errors import ConfigError, FitError, LayerError
from recon.io.hashing import layer_sha256
from recon.methods import Fitted, Method, SolverOptions
from recon.nn import Geometry
from recon.pipeline.observe import HELD_OUT_EVERY
from recon.record import LayerRecord
from solvers.conditioning import Conditioning, conditioning
from solvers.errors import DivergenceError, ProblemError
from solvers.objectives import Moments, data_relative_error, filter_relative_error, refit_bias


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A float64 NumPy copy of ``tensor``, wherever it lives (the one torch -> solver crossing)."""
    return tensor.detach().to("cpu", torch.float64).numpy()


def layer_arrays(layer: nn.Module, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(weights, bias or None) of ``layer`` as float64 arrays; LayerError for non-finite weights."""
    weights = to_numpy(layer.weight)
    bias = None if layer.bias is None else to_numpy(layer.bias)
    for label, values in (("weights", weights), ("bias", bias)):
        if values is not None and not np.all(np.isfinite(values)):
            raise LayerError(f"layer {name!r}: its {label} contain NaN or infinite values")
    return weights, bias


def _by_group(weights: np.ndarray, moments: Moments, groups: int):
    """(output slice, that group's flattened weights, its moments) for every group."""
    per_group = weights.shape[0] // groups
    for index in range(groups):
        rows = slice(index * per_group, (index + 1) * per_group)
        yield rows, weights[rows], moments.group(index)


def refit_biases(weights: np.ndarray, bias: np.ndarray | None, w_hat: np.ndarray, moments: Moments,
                 groups: int) -> np.ndarray:
    """The refitted bias of every group's outputs."""
    refitted = np.zeros(weights.shape[0])
    for rows, group_weights, group_moments in _by_group(weights, moments, groups):
        refitted[rows] = refit_bias(group_weights, None if bias is None else bias[rows], w_hat[rows], group_moments)
    return refitted


def output_variance_lost(weights: np.ndarray, bias: np.ndarray | None, w_hat: np.ndarray,
                         bias_hat: np.ndarray | None, moments: Moments, groups: int) -> float:
    """The fraction of the layer's output variance lost, over all groups' outputs."""
    lost = variance = 0.0
    pick = lambda values, rows: None if values is None else values[rows]
    for rows, group_weights, group_moments in _by_group(weights, moments, groups):
        group_variance = group_moments.output_variance(group_weights.reshape(len(group_weights), -1))
        lost += group_variance * data_relative_error(group_weights, pick(bias, rows), w_hat[rows],
                                                     pick(bias_hat, rows), group_moments)
        variance += group_variance
    return lost / variance


def approximation_error(weights: np.ndarray, bias: np.ndarray | None, w_hat: np.ndarray, moments: Moments | None,
                        groups: int) -> float:
    """How much of the layer ``w_hat`` loses: of its output variance, bias refitted, given
    input ``moments``; of its weight energy without them (the measures of ``rank_errors``)."""
    if moments is None:
        return filter_relative_error(weights, w_hat)
    return output_variance_lost(weights, bias, w_hat, refit_biases(weights, bias, w_hat, moments, groups), moments,
                                groups)


def input_conditioning(moments: Moments) -> Conditioning:
    """The conditioning of the inputs' covariance; for a grouped layer its worst group's."""
    each = [conditioning(moments.group(g).covariance_hat(), moments.count) for g in range(moments.groups)]
    return min(each, key=lambda c: (c.effective_rank / c.dim, -c.unseen, -c.condition))


def fit_layers(method: Method, layers: dict[str, nn.Module], ranks: dict[str, Any],
               moments: dict[str, Moments | None], options: SolverOptions,
               input_shapes: dict[str, tuple[int, ...]] | None = None,
               config: dict[str, Any] | None = None) -> dict[str, LayerRecord]:
    """Fit ``method`` at ``ranks`` to ``layers`` (to their outputs where ``moments`` are given,
    with the bias refitted from the input means; a method that does not ``fits_data`` is fitted
    to the weights and refits only the bias). Layers that share a ``Method.batch_key`` are
    solved in one batched call (their fit time is the batch's, split evenly); with several
    ``options.ridges`` each layer's ridge is chosen first (``choose_ridges``). Records come back
    in the order of ``layers``, modules on each layer's device and dtype."""
    batches: dict[Any, list[str]] = defaultdict(list)
    for name, layer in layers.items():
        batches[method.batch_key(method.geometry(layer), ranks[name], moments[name] is not None)].append(name)
    records: dict[str, LayerRecord] = {}
    for names in batches.values():
        arrays = {name: layer_arrays(layers[name], name) for name in names}
        rank, geometry = ranks[names[0]], method.geometry(layers[names[0]])
        groups = geometry.groups
        data = {name: moments[name] if method.fits_data else None for name in names}
        start = time.perf_counter()
        chosen = choose_ridges(method, geometry, arrays, data, rank, options)
        fitted: dict[str, Fitted] = {}
        for ridge, subset in _by_value({name: chosen[name].ridge for name in names}).items():
            results = _solve(method, [(arrays[name][0], data[name]) for name in subset], rank,
                             options.with_ridge(ridge), groups, subset)
            fitted.update(zip(subset, results))
        seconds = (time.perf_counter() - start) / len(names)
        for name in names:
            result = fitted[name]._replace(history={**fitted[name].history, **chosen[name].history()})
            shape = None if input_shapes is None else input_shapes[name]
            records[name] = _record(method, layers[name], name, result, *arrays[name], moments[name], seconds, shape,
                                    config or {})
    return {name: records[name] for name in layers}


def _by_value(values: dict[str, Any]) -> dict[Any, list[str]]:
    """The names of ``values`` grouped by their value."""
    groups: dict[Any, list[str]] = defaultdict(list)
    for name, value in values.items():
        groups[value].append(name)
    return groups


def _solve(method: Method, problems: list[tuple[np.ndarray, Moments | None]], rank: Any, options: SolverOptions,
           groups: int, names: list[str]) -> list[Fitted]:
    """``method.fit_many``, its failures as a FitError naming the layers."""
    try:
        return method.fit_many(problems, rank, options, groups)
    except (ProblemError, DivergenceError, FitError) as err:
        raise FitError(f"layer {', '.join(repr(n) for n in names)} ({method.name}, rank {rank}): {err}") from err


class RidgeChoice(NamedTuple):
    """The ridge a layer is fitted with, and the held-out output variance lost with each tried
    (empty when there was nothing to choose)."""

    ridge: float
    tried: tuple[tuple[float, float], ...] = ()

    def history(self) -> dict[str, np.ndarray]:
        """The table of tries, (ridge, held-out loss) rows, for the layer's stored history."""
        return {"ridge_held_out_loss": np.array(self.tried)} if self.tried else {}


def choose_ridges(method: Method, geometry: Geometry, arrays: dict[str, tuple[np.ndarray, np.ndarray | None]],
                  moments: dict[str, Moments | None], rank: Any, options: SolverOptions) -> dict[str, RidgeChoice]:
    """The ridge among ``options.ridges`` for each layer of one batch (``arrays``: weights and
    bias by name, all of ``geometry``'s shape): fitted on its statistics without the held-out
    samples, the one whose fit loses the least output variance on the held-out ones (bias
    refitted on the rest). One ridge, filter mode or no held-out samples: the first (a warning
    says so when there was a choice to make)."""
    ridges, groups = options.ridges, geometry.groups
    names = list(arrays)
    if len(ridges) == 1 or all(moments[name] is None for name in names):
        return {name: RidgeChoice(ridges[0]) for name in names}
    unsplit = [name for name in names if not moments[name].has_held_out]
    if unsplit:
        warnings.warn(f"layer(s) {', '.join(unsplit)}: the statistics hold no held-out samples (fewer than "
                      f"{HELD_OUT_EVERY} images?), so the ridge is not chosen: {ridges[0]} is used", stacklevel=3)
        return {name: RidgeChoice(ridges[0]) for name in names}
    rest = {name: moments[name].without_held_out() for name in names}
    losses: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for ridge in ridges:
        fitted = _solve(method, [(arrays[name][0], rest[name]) for name in names], rank, options.with_ridge(ridge),
                        groups, names)
        for name, result in zip(names, fitted):
            weights, bias = arrays[name]
            w_hat = to_numpy(method.build(geometry, result, None).dense_weight())
            bias_hat = refit_biases(weights, bias, w_hat, rest[name], groups)
            losses[name].append((ridge, output_variance_lost(weights, bias, w_hat, bias_hat, moments[name].held_out,
                                                             groups)))
    return {name: RidgeChoice(min(tried, key=lambda pair: pair[1])[0], tuple(tried)) for name, tried in losses.items()}


def fit_layer(method: Method, layer: nn.Module, name: str, rank: Any, moments: Moments | None,
              options: SolverOptions, input_shape: tuple[int, ...] | None = None,
              config: dict[str, Any] | None = None) -> LayerRecord:
    """``fit_layers`` for one layer."""
    shapes = None if input_shape is None else {name: input_shape}
    return fit_layers(method, {name: layer}, {name: rank}, {name: moments}, options, shapes, config)[name]


def _record(method: Method, layer: nn.Module, name: str, fitted: Fitted, weights: np.ndarray, bias: np.ndarray | None,
            moments: Moments | None, seconds: float, input_shape: tuple[int, ...] | None,
            config: dict[str, Any]) -> LayerRecord:
    """The record of one fitted layer: its module (bias refitted in data mode) and its errors."""
    geometry = method.geometry(layer)
    w_hat = to_numpy(method.build(geometry, fitted, None).dense_weight())
    bias_hat = bias if moments is None else refit_biases(weights, bias, w_hat, moments, geometry.groups)
    module = method.build(geometry, fitted, bias_hat)
    output_lost = (math.nan if moments is None
                   else output_variance_lost(weights, bias, w_hat, bias_hat, moments, geometry.groups))
    weight_hash, bias_hash = layer_sha256(layer)
    return LayerRecord(
        name=name, method=method.name, rank=fitted.rank,
        mode="data" if moments is not None and method.fits_data else "filter",
        geometry=geometry, module=module.to(device=layer.weight.device, dtype=layer.weight.dtype).eval(),
        weight_sha256=weight_hash, bias_sha256=bias_hash,
        filter_energy_lost=filter_relative_error(weights, w_hat), output_variance_lost=output_lost,
        input_shape=input_shape, dense_macs=None if input_shape is None else geometry.dense_macs(input_shape),
        macs=None if input_shape is None else module.macs(input_shape), fit_seconds=seconds,
        statistics=None if moments is None else input_conditioning(moments), config=config,
        history=fitted.history)


def decompose(layer: nn.Module, rank: Any, method: str | Method = "scheme2", moments: Moments | None = None,
              solver: SolverOptions = SolverOptions()) -> nn.Module:
    """The low-rank module of one ``nn.Conv2d`` / ``nn.Linear``, e.g. ``decompose(conv, 8)``:
    fitted to its weights, or to its outputs given input ``moments`` (``recon.observe``)."""
    method = methods.get(method) if isinstance(method, str) else method
    if solver.method_settings():  # the deprecated SolverOptions(lbfgs_iterations=...) and kin
        method = methods.with_settings(methods.resolve(method), methods.legacy_settings(vars(solver))).methods[0]
    if moments is not None and not isinstance(moments, Moments):
        raise ConfigError(f"moments must be one layer's recon.observe(model, data)[name] (a Moments), got "
                          f"{type(moments).__name__}")
    reason = method.eligible(layer)
    if reason is not None:
        raise LayerError(f"{method.name} cannot replace this {type(layer).__name__}: {reason}")
    method.check_rank(method.geometry(layer), rank)
    return fit_layer(method, layer, type(layer).__name__, rank, moments, solver).module
