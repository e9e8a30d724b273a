"""The bundled reference models, for 28x28 grey images.

``FmnistAlexNet``: an AlexNet-style CNN whose five convolutions are attributes ``conv1`` ...
``conv5`` so that ``--layer conv2`` addresses one. ``conv2`` is the 5x5, 64->128 layer that
the demo decomposes; conv3..conv5 are 3x3 layers with 192 channels. Training uses batch
normalisation after each convolution; ``fold_batchnorm`` merges it into the convolution's
weight and bias, so the shipped model is a plain conv/ReLU/max-pool network.

``FmnistResNet``: a ResNet-20 in the CIFAR style of He et al. (2016) as real networks are
built: BatchNorm after every convolution kept as a module, residual additions, stride-2
downsampling with 1x1 projection shortcuts, global average pooling.
"""
from __future__ import annotations

import torch
from torch import nn

CONV_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5")


class FmnistAlexNet(nn.Module):
    """conv1 5x5/64 - pool - conv2 5x5/128 - pool - conv3..5 3x3/192 - pool - fc 256 - fc 10."""

    def __init__(self, batchnorm: bool = False, num_classes: int = 10) -> None:
        super().__init__()
        widths = [(1, 64, 5), (64, 128, 5), (128, 192, 3), (192, 192, 3), (192, 192, 3)]
        for name, (cin, cout, k) in zip(CONV_NAMES, widths):
            setattr(self, name, nn.Conv2d(cin, cout, k, padding=k // 2))
            setattr(self, name.replace("conv", "norm"), nn.BatchNorm2d(cout) if batchnorm else nn.Identity())
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.classifier = nn.Sequential(
            nn.Dropout(0.3), nn.Linear(192 * 3 * 3, 256), nn.ReLU(inplace=True),
            nn.Dropout(0.3), nn.Linear(256, num_classes),
        )

    def _block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        conv = getattr(self, CONV_NAMES[index])
        norm = getattr(self, CONV_NAMES[index].replace("conv", "norm"))
        return self.relu(norm(conv(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self._block(0, x))
        x = self.pool(self._block(1, x))
        x = self._block(2, x)
        x = self._block(3, x)
        x = self.pool(self._block(4, x))
        return self.classifier(torch.flatten(x, 1))


@torch.no_grad()
def fold_batchnorm(trained: FmnistAlexNet) -> FmnistAlexNet:
    """A plain (no batch norm) copy of ``trained`` computing the same function in eval mode."""
    plain = FmnistAlexNet(batchnorm=False)
    plain.classifier.load_state_dict(trained.classifier.state_dict())
    for name in CONV_NAMES:
        conv = getattr(trained, name)
        norm = getattr(trained, name.replace("conv", "norm"))
        target = getattr(plain, name)
        if isinstance(norm, nn.BatchNorm2d):
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            target.weight.copy_(conv.weight * scale[:, None, None, None])
            target.bias.copy_((conv.bias - norm.running_mean) * scale + norm.bias)
        else:
            target.load_state_dict(conv.state_dict())
    return plain.eval()


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and ReLU around a residual addition. When the block changes
    width or stride the shortcut is a 1x1 projection with BatchNorm ("projection") or the
    subsampled input padded with zero channels (He et al.'s parameter-free option A): after
    its channels ("pad"), or half before and half after them ("pad-centred", the layout of the
    widely used published CIFAR ResNet weights)."""

    def __init__(self, inputs: int, outputs: int, stride: int, shortcut: str = "projection") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.shortcut = (nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))
                             if shortcut == "projection" else
                             PadShortcut(outputs - inputs, stride, centred=shortcut == "pad-centred"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class PadShortcut(nn.Module):
    """The input subsampled by ``stride`` and padded with ``extra`` zero channels: after its
    channels, or ``centred`` (half before, half after)."""

    def __init__(self, extra: int, stride: int, centred: bool = False) -> None:
        super().__init__()
        self.extra, self.stride = extra, stride
        self.before = extra // 2 if centred else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = (self.before, self.extra - self.before)
        return nn.functional.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, *channels))


class ResNet(nn.Module):
    """The CIFAR ResNets of He et al. (2016): a 3x3 conv, three stages of ``blocks`` basic blocks
    (``width``, 2x, 4x channels; stride 2 into stages 2 and 3), global average pool, linear."""

    def __init__(self, in_channels: int, width: int, blocks: int, shortcut: str = "projection",
                 num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages, inputs = [], width
        for index in range(3):
            outputs = width * 2 ** index
            stages.append(nn.Sequential(*[BasicBlock(inputs if block == 0 else outputs, outputs,
                                                     2 if index and block == 0 else 1, shortcut)
                                          for block in range(blocks)]))
            inputs = outputs
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inputs, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class FmnistResNet(ResNet):
    """ResNet-20 for 1x28x28 images with 32/64/128 channels on 28, 14 and 7 pixels and 1x1
    projection shortcuts: 19 3x3 convs, 2 1x1 convs, BatchNorm kept as modules."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(1, 32, 3, "projection", num_classes)
