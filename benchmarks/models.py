"""Models the benchmarks run on besides the bundled ones, in plain torch (no torchvision).

``cifar_resnet56``: the CIFAR-10 ResNet-56 of He et al. (2016, sec. 4.2): a 3x3 conv with 16
filters, three stages of nine basic blocks at 16, 32 and 64 channels on 32x32, 16x16 and 8x8
maps, parameter-free shortcuts (subsampled identity padded with zero channels, the paper's
option A), global average pooling, a 10-way linear layer: 55 convs. Seeded random weights and
BatchNorm statistics (the benchmarks time, count and fit; they do not measure its accuracy).
"""
from __future__ import annotations

import torch
from torch import nn

from recon.zoo.models import ResNet


def cifar_resnet56() -> nn.Module:
    """ResNet-56 for 3x32x32 inputs with seeded random weights and BatchNorm statistics, eval mode."""
    torch.manual_seed(0)
    model = ResNet(3, 16, 9, shortcut="pad")
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def cifar_batches(count: int = 2000, batch_size: int = 250) -> list[torch.Tensor]:
    """Seeded random 3x32x32 batches (statistics need inputs, not their meaning)."""
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(min(batch_size, count - start), 3, 32, 32, generator=generator)
            for start in range(0, count, batch_size)]
