"""Fit one layer with a method and describe the result: the step every policy and the
pipeline share. Torch tensors cross to the solvers here, and only here, as float64 NumPy."""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from recon.errors import FitError, LayerError
from recon.io.hashing import layer_sha256
from recon import methods
from recon.methods import Method, SolverOptions
from recon.record import LayerRecord
from solvers.conditioning import conditioning
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


def fit_layer(method: Method, layer: nn.Module, name: str, rank: Any, moments: Moments | None,
              options: SolverOptions, input_shape: tuple[int, ...] | None = None,
              config: dict[str, Any] | None = None) -> LayerRecord:
    """Fit ``method`` at ``rank`` to ``layer`` (to its outputs when ``moments`` are given, with
    the bias refitted from the input means) and return the record, whose module sits on the
    layer's device and dtype."""
    geometry = method.geometry(layer)
    weights, bias = layer_arrays(layer, name)
    start = time.perf_counter()
    try:
        fitted = method.fit(weights, rank, moments, options)
    except (ProblemError, DivergenceError, FitError) as err:
        raise FitError(f"layer {name!r} ({method.name}, rank {rank}): {err}") from err
    seconds = time.perf_counter() - start
    w_hat = to_numpy(method.build(geometry, fitted, None).dense_weight())
    bias_hat = bias if moments is None else refit_bias(weights, bias, w_hat, moments)
    module = method.build(geometry, fitted, bias_hat)
    output_lost = math.nan if moments is None else data_relative_error(weights, bias, w_hat, bias_hat, moments)
    weight_hash, bias_hash = layer_sha256(layer)
    statistics = None if moments is None else conditioning(moments.covariance_hat(), moments.count)
    return LayerRecord(
        name=name, method=method.name, rank=fitted.rank, mode="filter" if moments is None else "data",
        geometry=geometry, module=module.to(device=layer.weight.device, dtype=layer.weight.dtype).eval(),
        weight_sha256=weight_hash, bias_sha256=bias_hash,
        filter_energy_lost=filter_relative_error(weights, w_hat), output_variance_lost=output_lost,
        input_shape=input_shape, dense_macs=None if input_shape is None else geometry.dense_macs(input_shape),
        macs=None if input_shape is None else module.macs(input_shape), fit_seconds=seconds,
        statistics=statistics, config=config or {}, history=fitted.history)


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
