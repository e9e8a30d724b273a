"""sha256 fingerprints that tie a bases file to the exact layers it was fitted to."""
from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's float32 values in C order."""
    array = np.ascontiguousarray(tensor.detach().cpu().float().numpy())
    return hashlib.sha256(array.tobytes()).hexdigest()


def layer_sha256(layer: nn.Module) -> tuple[str, str | None]:
    """(weight sha256, bias sha256 or None when the layer has no bias)."""
    bias = getattr(layer, "bias", None)
    return tensor_sha256(layer.weight), None if bias is None else tensor_sha256(bias)


def model_sha256(model: nn.Module) -> str:
    """sha256 over the names and float32 values of a model's parameters and buffers."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensor.detach().cpu().float().numpy()).tobytes())
    return digest.hexdigest()
