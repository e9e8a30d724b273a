"""Fit low-rank bases to a model's convolutions, layer by layer, front to back.

For each layer: gather input statistics when fitting in data mode (asymmetrically, with
inputs from the partly approximated model, when asked), fit the chosen scheme with the JAX
solvers, refit the bias from the input means, measure filter and data errors, and put the
new module into the approximated model so later layers see its outputs.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from recon.guard import GuardDecision, time_replacement
from recon.modules import ConvGeometry, LowRankExpConv
from recon.stats import gather_moments
from recon.store import LayerBases, weight_sha256
from recon.surgery import get_conv, replace_layer
from recon.timing import capture_layer_inputs
from solvers import objectives, scheme1, scheme2
from solvers.objectives import Moments
from solvers.schedule import LambdaSchedule


@dataclass
class FitSettings:
    """How to fit: scheme, objective, solver settings, statistics sampling, guard timing, progress bars."""

    scheme: int = 2
    mode: str = "data"
    asymmetric: bool = False
    schedule: LambdaSchedule = field(default_factory=LambdaSchedule)
    lbfgs_iterations: int = 200
    patches_per_image: int | None = 32
    seed: int = 0
    guard_input: torch.Tensor | None = None
    channels_last: bool = False
    progress: bool = True


def check_num_bases(conv: nn.Conv2d, scheme: int, num_bases: int, name: str) -> None:
    """Raise ValueError naming the layer and the allowed range when ``num_bases`` is useless."""
    shape = tuple(conv.weight.shape)
    try:
        (scheme1.check_bases if scheme == 1 else scheme2.check_rank)(shape, num_bases)
    except ValueError as err:
        raise ValueError(f"layer {name!r}: {err}") from None


def layer_input_sizes(model: nn.Module, names: list[str], example: torch.Tensor) -> dict[str, tuple[int, int]]:
    """The (H, W) of each named layer's input for one forward pass of ``example``."""
    return {name: tuple(x.shape[-2:]) for name, x in capture_layer_inputs(model, names, example).items()}


def fit_weights(weights: np.ndarray, num_bases: int, settings: FitSettings,
                moments: Moments | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, float, dict]:
    """Factors of one layer's weights: (vertical, horizontal, coeffs or None, lambda_final, history)."""
    quad = (objectives.data_objective(weights, moments) if moments is not None
            else objectives.filter_objective(weights))
    if settings.scheme == 2:
        result = scheme2.fit(weights, num_bases, quad if moments is not None else None, settings.lbfgs_iterations)
        return result.vertical, result.horizontal, None, float("nan"), {}
    result = scheme1.fit(weights, quad, num_bases, settings.schedule)
    history = {"lambda": np.array([s.lam[0] for s in result.stages]),
               "objective": np.array([s.objective[0] for s in result.stages]),
               "rank_ratio": np.array([s.max_rank_ratio[0] for s in result.stages])}
    return (result.vertical[0], result.horizontal[0], result.coeffs[0], float(result.lambda_final[0]), history)


def fit_layer(model: nn.Module, approx: nn.Module, name: str, num_bases: int, settings: FitSettings,
              batches: Callable[[], Iterable] | None, input_size: tuple[int, int]) -> tuple[LayerBases, float]:
    """Fit one layer of ``model`` and put its low-rank module into ``approx``; returns its bases
    and the seconds the solver took."""
    conv = get_conv(model, name)
    weights = conv.weight.detach().double().numpy()
    bias = None if conv.bias is None else conv.bias.detach().double().numpy()
    moments = None
    if batches is not None:
        moments = gather_moments(model, name, batches(), approx if settings.asymmetric else None,
                                 settings.patches_per_image, settings.seed, settings.progress)
    start = time.perf_counter()
    vertical, horizontal, coeffs, lam, history = fit_weights(
        weights.astype(np.float32), num_bases, settings, moments if settings.mode == "data" else None)
    seconds = time.perf_counter() - start
    geometry = ConvGeometry.of(conv)
    module = LowRankExpConv.from_bases(geometry, vertical, horizontal, coeffs, bias)
    w_hat = module.dense_weight().detach().double().numpy()
    bias_hat = bias
    if settings.mode == "data":
        bias_hat = objectives.refit_bias(weights, bias, w_hat, moments)
        module = LowRankExpConv.from_bases(geometry, vertical, horizontal, coeffs, bias_hat)
    data_error = (objectives.data_relative_error(weights, bias, w_hat, bias_hat, moments)
                  if moments is not None else float("nan"))
    replace_layer(approx, name, module)
    layer = LayerBases(
        name=name, geometry=geometry, scheme=settings.scheme, mode=settings.mode, vertical=vertical,
        horizontal=horizontal, coeffs=coeffs, bias=None if bias_hat is None else np.asarray(bias_hat, np.float32),
        weight_sha256=weight_sha256(conv.weight), lambda_final=lam,
        filter_rel_error=objectives.filter_relative_error(weights, w_hat), data_rel_error=data_error,
        theoretical_speedup=module.theoretical_speedup(input_size), history=history)
    return layer, seconds


def fit_model(model: nn.Module, bases: dict[str, int], settings: FitSettings,
              batches: Callable[[], Iterable] | None, input_sizes: dict[str, tuple[int, int]],
              on_layer: Callable[[LayerBases, float], None] | None = None,
              on_guard: Callable[[GuardDecision], None] | None = None) -> nn.Module:
    """Fit every layer of ``bases`` (name -> number of bases) in model order; returns the
    approximated copy of ``model``. ``on_layer`` is called after each kept layer (e.g. to
    save). With ``settings.guard_input``, a layer whose low-rank module is not measurably
    faster than the dense conv stays dense (``on_guard`` hears every decision)."""
    approx = copy.deepcopy(model).eval()
    order = [name for name, _ in model.named_modules() if name in bases]
    guard_inputs = (capture_layer_inputs(model, order, settings.guard_input)
                    if settings.guard_input is not None else {})
    for name in order:
        layer, seconds = fit_layer(model, approx, name, bases[name], settings, batches, input_sizes[name])
        if name in guard_inputs:
            decision = time_replacement(get_conv(model, name), approx.get_submodule(name), guard_inputs[name], name,
                                        channels_last=settings.channels_last)
            if on_guard is not None:
                on_guard(decision)
            if not decision.kept:
                replace_layer(approx, name, copy.deepcopy(get_conv(model, name)))
                continue
        if on_layer is not None:
            on_layer(layer, seconds)
    return approx
