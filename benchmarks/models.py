"""Models the benchmarks run on besides the bundled ones, in plain torch (no torchvision).

``cifar_resnet56``: the CIFAR-10 ResNet-56 of He et al. (2016, sec. 4.2): a 3x3 conv with 16
filters, then three stages of nine basic blocks (two 3x3 convs with BatchNorm and ReLU) at
16, 32 and 64 channels on 32x32, 16x16 and 8x8 maps, stride-2 downsampling at the first conv
of stages 2 and 3 with parameter-free shortcuts (subsampled identity padded with zero
channels, the paper's option A), global average pooling and a 10-way linear layer: 55 convs.
Weights are seeded random (the benchmarks time and count, they do not measure accuracy).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.pad = outputs - inputs
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.pad))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int = 9, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, inputs = [], 16
        for index, width in enumerate((16, 32, 64)):
            blocks = []
            for block in range(blocks_per_stage):
                blocks.append(BasicBlock(inputs, width, 2 if index and not block else 1))
                inputs = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def cifar_resnet56() -> nn.Module:
    """ResNet-56 for 3x32x32 inputs with seeded random weights and BatchNorm statistics, eval mode."""
    torch.manual_seed(0)
    model = CifarResNet(9)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def cifar_batches(count: int = 2000, batch_size: int = 250):
    """Seeded random 3x32x32 batches (statistics need inputs, not their meaning)."""
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(min(batch_size, count - start), 3, 32, 32, generator=generator)
            for start in range(0, count, batch_size)]
