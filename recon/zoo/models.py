"""The bundled reference model: an AlexNet-style CNN for 28x28 grey images.

The five convolutions are attributes ``conv1`` ... ``conv5`` so that ``--layer conv2``
addresses one. ``conv2`` is the 5x5, 64->128 layer that the demo decomposes; conv3..conv5
are 3x3 layers with 192 channels. Training uses batch normalisation after each convolution;
``fold_batchnorm`` merges it into the convolution's weight and bias, so the shipped model is
a plain conv/ReLU/max-pool network whose convolutions are the layers users decompose.
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
