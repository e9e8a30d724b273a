"""How much each layer's error costs at the model's output, measured on real inputs.

A layer whose reconstruction loses a fraction e of its output variance changes the model's
output by about s * e of the output's variance, to first order; s, the layer's sensitivity,
differs by orders of magnitude between layers (an early layer's error passes through every
later one). It is measured with the kind of error that rank allocation will cause: one
layer at a time is replaced by a probe, a low-rank module of that layer, and s is the
relative change of the model's output over the relative change of the layer's output. White
noise of the same size is a poor probe: it spreads over every direction, while a truncation
removes the weak directions, which later layers can amplify (on the bundled model noise put
conv5's sensitivity so low that an allocation cut it to rank 2 and accuracy fell to 24%).
One forward pass per layer, no labels.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from recon.errors import DataError


def _leaves(output: object) -> list[torch.Tensor]:
    """The floating point tensors in a model's output, in order (tensors, tuples, lists, dicts)."""
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, Mapping):
        return [leaf for value in output.values() for leaf in _leaves(value)]
    if isinstance(output, (tuple, list)):
        return [leaf for value in output for leaf in _leaves(value)]
    return []


def model_output(output: object) -> torch.Tensor:
    """A model's output as one (batch, features) tensor: a tensor as it is, the floating point
    tensors of a tuple, list or dict (detection, segmentation, Hugging Face outputs) flattened
    per sample and side by side, so every one of them counts in an output change."""
    if isinstance(output, torch.Tensor) and output.is_floating_point():
        return output
    leaves = _leaves(output)
    if not leaves or any(leaf.ndim == 0 or len(leaf) != len(leaves[0]) for leaf in leaves):
        raise DataError(f"the model returned {type(output).__name__}: recon compares outputs as floating point "
                        "tensors with the batch first (a tensor, or a tuple, list or dict of them)")
    return torch.cat([leaf.reshape(len(leaf), -1) for leaf in leaves], dim=1)


def relative_change(changed: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """||changed - reference||^2 / ||reference - its batch mean||^2 (differentiable)."""
    centred = reference - reference.mean(dim=0, keepdim=True)
    return ((changed - reference) ** 2).sum() / (centred ** 2).sum().clamp_min(1e-12)


def channel_axis(output: torch.Tensor) -> int:
    """The channel axis of a layer's output: 1 for convolutions (N, C, H, W), the last for
    linear layers ((N, F) or (N, ..., F))."""
    return 1 if output.ndim == 4 else output.ndim - 1


@torch.inference_mode()
def output_sensitivities(model: nn.Module, probes: dict[str, nn.Module], sample: torch.Tensor) -> dict[str, float]:
    """Per named layer: the relative change of ``model``'s output on the batch ``sample``
    divided by the relative change of the layer's output, when ``probes[name]`` computes
    that layer's output instead (0 for a probe that changes nothing)."""
    reference = model_output(model(sample)).double()
    sensitivities = {}
    for name, probe in probes.items():
        changes = []

        def replace(module, args, output, probe=probe):
            replaced = probe(*args)
            changes.append(float(relative_change(replaced.double(), output.double())))
            return replaced

        hook = model.get_submodule(name).register_forward_hook(replace)
        try:
            change = float(relative_change(model_output(model(sample)).double(), reference))
        finally:
            hook.remove()
        sensitivities[name] = change / changes[0] if changes[0] > 0 else 0.0
    return sensitivities


@torch.inference_mode()
def output_change(dense: nn.Module, approx: nn.Module, sample: torch.Tensor) -> float:
    """The relative change of ``approx``'s output from ``dense``'s on ``sample``."""
    return float(relative_change(model_output(approx(sample)).double(), model_output(dense(sample)).double()))


@torch.inference_mode()
def contributions(dense: nn.Module, approx: nn.Module, layers: list[str], sample: torch.Tensor) -> tuple[float, dict[str, float]]:
    """(``output_change`` of ``approx``, and per named layer the part of it that goes away when
    that layer alone computes its dense output again): each layer's share of the error as the
    approximated network really compounds it."""
    change = output_change(dense, approx, sample)
    shares = {}
    for name in layers:
        original = dense.get_submodule(name)
        hook = approx.get_submodule(name).register_forward_hook(lambda module, args, output, original=original:
                                                                original(*args))
        try:
            shares[name] = change - output_change(dense, approx, sample)
        finally:
            hook.remove()
    return change, shares
