"""Comparing a model's outputs: any output as one (batch, features) tensor, and the relative
change between two of them (the measure that calibration, block reconstruction and loss
prediction share)."""
from __future__ import annotations

from collections.abc import Mapping

import torch

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
