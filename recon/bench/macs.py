"""Multiply-accumulate counts of whole models, for predicted (not measured) speedups."""
from __future__ import annotations

import math

import torch
from torch import nn

from recon.inputs import run, take
from recon.nn import LowRankModule


def layer_macs(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates per sample of every Conv2d, Linear and low-rank module, by name,
    from one forward pass of ``example`` (its first sample)."""
    macs: dict[str, int] = {}

    def count(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            shape = tuple(args[0].shape[1:])
            if isinstance(module, LowRankModule):
                macs[name] = module.macs(shape)
            else:
                per_output = module.weight[0].numel()
                macs[name] = per_output * math.prod(output.shape[1:])
        return hook

    kinds = (nn.Conv2d, nn.Linear, LowRankModule)
    hooks = [module.register_forward_hook(count(name)) for name, module in model.named_modules()
             if isinstance(module, kinds) and not any(isinstance(child, kinds) for child in module.children())]
    try:
        with torch.inference_mode():
            run(model, take(example, 1))
    finally:
        for hook in hooks:
            hook.remove()
    return macs
