"""Fit one layer with a method and describe the result: the step every policy and the
pipeline share. Torch tensors cross to the solvers here, and only here, as float64 NumPy."""
from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torch import nn

from recon import methods
from recon.errors import FitError, LayerError
from recon.io.hashing import layer_sha256
from recon.methods import Fitted, Method, SolverOptions
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
    solved in one batched call (their fit time is the batch's, split evenly). Records come back
    in the order of ``layers``, modules on each layer's device and dtype."""
    batches: dict[Any, list[str]] = defaultdict(list)
    for name, layer in layers.items():
        batches[method.batch_key(method.geometry(layer), ranks[name], moments[name] is not None)].append(name)
    records: dict[str, LayerRecord] = {}
    for names in batches.values():
        arrays = {name: layer_arrays(layers[name], name) for name in names}
        rank, groups = ranks[names[0]], method.geometry(layers[names[0]]).groups
        start = time.perf_counter()
        try:
            fitted = method.fit_many([(arrays[name][0], moments[name] if method.fits_data else None) for name in names],
                                     rank, options, groups)
        except (ProblemError, DivergenceError, FitError) as err:
            raise FitError(f"layer {', '.join(repr(n) for n in names)} ({method.name}, rank {rank}): {err}") from err
        seconds = (time.perf_counter() - start) / len(names)
        for name, result in zip(names, fitted):
            shape = None if input_shapes is None else input_shapes[name]
            records[name] = _record(method, layers[name], name, result, *arrays[name], moments[name], seconds, shape,
                                    config or {})
    return {name: records[name] for name in layers}


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
    reason = method.eligible(layer)
    if reason is not None:
        raise LayerError(f"{method.name} cannot replace this {type(layer).__name__}: {reason}")
    method.check_rank(method.geometry(layer), rank)
    return fit_layer(method, layer, type(layer).__name__, rank, moments, solver).module
