"""Modules to time rather than to use: with seeded random factors (a single convolution's time
does not depend on its values) or quickly fitted ones (a whole model's time does, through its
activations: see ``Method.quick_fit``), put into a copy of a model."""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from recon.methods import Method
from recon.nn import Geometry, LowRankModule
from recon.nn.replace import replace_layer


def random_module(method: Method, geometry: Geometry, rank: Any, bias: bool = True, seed: int = 0) -> LowRankModule:
    """``method``'s module for ``geometry`` at ``rank`` with small seeded random parameters."""
    module = method.module_class(geometry, method.module_rank(geometry, rank), bias=bias)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.01 * torch.randn(parameter.shape, generator=generator))
    return module.eval()


def timing_model(model: nn.Module, modules: dict[str, LowRankModule]) -> nn.Module:
    """A copy of ``model`` with ``modules`` in place of the named layers, on each layer's device and dtype."""
    timed = copy.deepcopy(model).eval()
    for name, module in modules.items():
        layer = model.get_submodule(name)
        replace_layer(timed, name, module.to(device=layer.weight.device, dtype=layer.weight.dtype).eval())
    return timed
