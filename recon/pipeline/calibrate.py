"""Calibration without labels: make an approximated model's replaced layers produce what the
dense model's layers produce, on unlabeled inputs.

1. Bias correction: each replaced layer's per-channel output mean, measured inside the
   approximated network (its inputs carry the errors of the layers before it), is moved to
   the dense layer's mean inside the dense network; one pass for all layers. A layer that has
   no bias gets one. This is also what BatchNorm re-estimation would correct, but it is kept
   in the low-rank modules: the BatchNorm statistics stay those the network was trained
   with, and the bases file holds the whole result.
2. Local distillation: Adam on the low-rank factors (nothing else) minimising the relative
   squared error of every replaced layer's output and of the model's output against the dense
   model, both run on the same batch. Each tensor's step size is proportional to its RMS
   value, so factors of very different scales (CP's) move alike, and gradients are clipped.

Each of the two is undone as a whole when it raises the model's output error on held-out
samples (the report then counts 0 distillation steps).
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from recon.errors import ConfigError, DataError
from recon.inputs import Batch, cat, chunks, describe, device_of, run, select, size, take
from recon.model_checks import check_made_from, check_model
from recon.nn import LowRankModule
from recon.pipeline.batches import Batches
from recon.pipeline.finetune import clipped_step, only_trainable, relative_adam, shuffled_batches
from recon.pipeline.outputs import channel_axis, model_output, relative_change

LOG = logging.getLogger("recon")


@dataclass(frozen=True)
class CalibrationReport:
    """Relative output errors (model output; mean over replaced layers) on the held-out batch
    before calibration, after bias correction and after distillation, and the seconds taken."""

    before: tuple[float, float]
    after_bias: tuple[float, float]
    after: tuple[float, float]
    steps: int
    seconds: float

    def describe(self) -> str:
        fmt = lambda pair: f"output {pair[0]:.4f}, layers {pair[1]:.4f}"
        return (f"relative squared error on held-out images: before {fmt(self.before)}; after bias correction "
                f"{fmt(self.after_bias)}; after {self.steps} distillation steps {fmt(self.after)} "
                f"({self.seconds:.0f} s)")


def low_rank_layers(model: nn.Module) -> list[str]:
    """Qualified names of the low-rank modules of ``model``, in model order."""
    return [name for name, module in model.named_modules() if isinstance(module, LowRankModule)]


def _outputs(model: nn.Module, names: list[str], inputs: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The model's output and each named layer's output for ``inputs`` (graph kept when grad is on)."""
    captured: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(name).register_forward_hook(
        lambda module, args, output, name=name: captured.__setitem__(name, output)) for name in names]
    try:
        output = model_output(run(model, inputs))
    finally:
        for hook in hooks:
            hook.remove()
    return output, captured


def _errors(approx: nn.Module, dense: nn.Module, names: list[str], inputs: Batch) -> tuple[float, float]:
    with torch.no_grad():
        out_hat, layers_hat = _outputs(approx, names, inputs)
        out, layers = _outputs(dense, names, inputs)
    per_layer = [float(relative_change(layers_hat[n], layers[n])) for n in names]
    return float(relative_change(out_hat, out)), sum(per_layer) / len(per_layer)


def _channel_means(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: y.double().mean(dim=[d for d in range(y.ndim) if d != channel_axis(y)])
            for name, y in outputs.items()}


@torch.no_grad()
def correct_biases(approx: nn.Module, dense: nn.Module, names: list[str], batches: list[torch.Tensor]) -> None:
    """Move each named layer's per-channel output mean in ``approx`` to the dense layer's."""
    sums_hat, sums = {}, {}
    for inputs in batches:
        for target, model in ((sums_hat, approx), (sums, dense)):
            for name, mean in _channel_means(_outputs(model, names, inputs)[1]).items():
                target[name] = target.get(name, 0) + mean * size(inputs)
    for name in names:
        module = approx.get_submodule(name)
        shift = ((sums[name] - sums_hat[name]) / sum(size(b) for b in batches)).to(module.dense_weight().dtype)
        if module.bias is None:
            module.bias = nn.Parameter(torch.zeros_like(shift))
        module.bias.add_(shift)


def _samples(data: Iterable, limit: int, device: torch.device, dtype: torch.dtype) -> Batch:
    return cat(list(Batches(data, limit, device, dtype)))


def _check(samples: int, epochs: int, batch_size: int, lr: float) -> None:
    for label, value, minimum in (("samples", samples, 2), ("epochs", epochs, 0), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{label} must be a whole number >= {minimum}, got {value!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ConfigError(f"lr must be a number > 0, got {lr!r}")


def calibrate(approx: nn.Module, dense: nn.Module, data: Iterable, *, samples: int = 5000, epochs: int = 4,
              batch_size: int = 64, lr: float = 3e-3, seed: int = 0, progress: bool = True) -> CalibrationReport:
    """Calibrate ``approx`` (a model with low-rank modules, e.g. ``Compression.model``) to
    ``dense`` on at most ``samples`` unlabeled inputs from ``data``, in place.

    A tenth of the samples (at most 500) is held out to judge the result. ``epochs`` of Adam
    over the rest, ``lr`` relative to each factor tensor's RMS value.
    """
    check_model(approx, "the low-rank model")
    check_model(dense, "dense")
    names = low_rank_layers(approx)
    if not names:
        raise ConfigError("the model has no low-rank layer: nothing to calibrate")
    check_made_from(dense, names)
    _check(samples, epochs, batch_size, lr)
    start = time.perf_counter()
    parameter = next(approx.parameters())
    approx.eval()
    dense.eval()
    images = _samples(data, samples, parameter.device, parameter.dtype)
    count = size(images)
    if count < 2:
        raise ConfigError(f"calibration needs at least 2 samples, got {count}")
    held = min(500, max(1, count // 10))
    held_out, train = take(images, held), take(images, held, count)
    try:
        before = _errors(approx, dense, names, held_out)
    except RuntimeError as err:
        raise DataError(f"the models failed on the calibration data (batch shape {describe(held_out)}): {err}") \
            from err
    modules = [approx.get_submodule(name) for name in names]

    def unless_better(step: Callable[[], Any], baseline: tuple[float, float],
                      what: str) -> tuple[tuple[float, float], Any]:
        """Run ``step``; undo it when the held-out output error did not fall."""
        snapshot = [(module.bias, copy.deepcopy(module.state_dict())) for module in modules]
        result = step()
        errors = _errors(approx, dense, names, held_out)
        if errors[0] <= baseline[0]:
            return errors, result
        for module, (bias, state) in zip(modules, snapshot):
            if bias is None:  # a bias the step added goes again
                module.bias = None
            module.load_state_dict(state)
        LOG.info("%s raised the held-out output error (%.4f -> %.4f): undone", what, baseline[0], errors[0])
        return baseline, None

    after_bias, _ = unless_better(lambda: correct_biases(approx, dense, names, chunks(train, 250)), before,
                                  "bias correction")
    after, steps = unless_better(lambda: _distil(approx, dense, names, train, epochs, batch_size, lr, seed, progress),
                                 after_bias, "distillation")
    steps = steps or 0
    report = CalibrationReport(before, after_bias, after, steps, time.perf_counter() - start)
    LOG.info("calibration: %s", report.describe())
    return report


def _distil(approx: nn.Module, dense: nn.Module, names: list[str], train: Batch, epochs: int,
            batch_size: int, lr: float, seed: int, progress: bool) -> int:
    """Adam on the low-rank factors against the dense model's layer and model outputs; stops
    at a non-finite loss (the caller undoes steps that did not help). Returns the steps taken."""
    parameters = [p for name in names for p in approx.get_submodule(name).parameters()]
    optimizer = relative_adam(parameters, lr)
    generator = torch.Generator().manual_seed(seed)
    steps = 0
    with only_trainable(approx, parameters):
        for epoch in range(epochs):
            for index in shuffled_batches(size(train), batch_size, generator, device_of(train),
                                          f"calibration {epoch + 1}/{epochs}", progress):
                inputs = select(train, index)
                with torch.no_grad():
                    out, layers = _outputs(dense, names, inputs)
                out_hat, layers_hat = _outputs(approx, names, inputs)
                layer_loss = sum(relative_change(layers_hat[n], layers[n]) for n in names) / len(names)
                loss = relative_change(out_hat, out) + layer_loss
                if not torch.isfinite(loss):
                    return steps
                clipped_step(optimizer, loss, parameters)
                steps += 1
    return steps
