"""CIFAR-10 ResNets of He et al. (2016) in plain torch, and a reader for the widely used
published checkpoints of them (``{"state_dict": {"module.conv1.weight": ...}}``, the layout
written by ``torch.nn.DataParallel`` training scripts, the classifier named ``linear``).

The published weights use option-A shortcuts that pad the subsampled input with zero channels
half before and half after its own (``PadShortcut(centred=True)``); the model's inputs are
``x / 255`` normalised with ``CIFAR_MEAN`` and ``CIFAR_STD``.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from recon.errors import ConfigError
from recon.zoo.models import ResNet

CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)
RENAMED = {"linear.": "fc."}  # published name prefix -> ours


def cifar_resnet(depth: int = 20) -> ResNet:
    """An untrained CIFAR ResNet of ``depth`` = 6n + 2 layers (20, 32, 44, 56, 110) for 3x32x32
    inputs: 16/32/64 channels, centred zero-padding shortcuts, eval mode."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ConfigError(f"a CIFAR ResNet has 6n + 2 layers (20, 32, 44, 56, 110), got depth {depth!r}")
    return ResNet(3, 16, (depth - 2) // 6, shortcut="pad-centred").eval()


def published_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """Our parameter names for a published checkpoint's state dict ("module." prefixes
    dropped, ``linear`` renamed ``fc``)."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError("a published CIFAR ResNet checkpoint is a state dict, or a dict with one under 'state_dict'")
    renamed = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        for old, new in RENAMED.items():
            key = new + key[len(old):] if key.startswith(old) else key
        renamed[key] = value
    return renamed


def load_cifar_resnet(path: str | os.PathLike, depth: int = 20) -> ResNet:
    """The CIFAR ResNet of ``depth`` with the published weights at ``path``, on the CPU, eval mode."""
    model = cifar_resnet(depth)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise ConfigError(f"cannot read a torch checkpoint at {path}: {err}") from err
    try:
        model.load_state_dict(published_state_dict(checkpoint), strict=True)
    except RuntimeError as err:
        raise ConfigError(f"{path} is not a ResNet-{depth} checkpoint: {err}") from err
    return model.eval()
