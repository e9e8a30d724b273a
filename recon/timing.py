"""Wall-clock timing of modules, and the inputs that layers see in a forward pass."""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def _synchronize(tensor: torch.Tensor) -> None:
    if tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)


@torch.inference_mode()
def median_latency(module: nn.Module, inputs: torch.Tensor, repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds of ``module(inputs)`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        module(inputs)
    _synchronize(inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        module(inputs)
        _synchronize(inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def capture_layer_inputs(model: nn.Module, names: list[str], example: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each named submodule's input for one forward pass of ``example``."""
    captured: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(name).register_forward_pre_hook(
        lambda module, args, name=name: captured.__setitem__(name, args[0].detach().clone()))
        for name in names]
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    missing = [name for name in names if name not in captured]
    if missing:
        raise ValueError(f"layer(s) {', '.join(missing)} did not run in the forward pass of the example input")
    return captured
