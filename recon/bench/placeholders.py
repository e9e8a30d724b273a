"""Modules with seeded random factors, for timing: how long a module takes does not depend on
the values of its factors, so nothing needs fitting to know what a rank costs."""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from recon.methods import Method
from recon.nn import Geometry, LowRankModule
from recon.surgery import replace_layer


def random_module(method: Method, geometry: Geometry, rank: Any, bias: bool = True, seed: int = 0) -> LowRankModule:
    """``method``'s module for ``geometry`` at ``rank`` with small seeded random parameters."""
    module = method.module_class(geometry, rank, bias=bias)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.01 * torch.randn(parameter.shape, generator=generator))
    return module.eval()


def placeholder_model(model: nn.Module, method: Method, geometries: dict[str, Geometry],
                      ranks: dict[str, Any]) -> nn.Module:
    """A copy of ``model`` with ``method``'s random modules at ``ranks`` (None: the dense layer),
    on each layer's device and dtype."""
    timed = copy.deepcopy(model).eval()
    for name, rank in ranks.items():
        if rank is None:
            continue
        layer = model.get_submodule(name)
        module = random_module(method, geometries[name], rank, bias=layer.bias is not None)
        replace_layer(timed, name, module.to(device=layer.weight.device, dtype=layer.weight.dtype))
    return timed
