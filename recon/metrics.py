"""How good a classifier is: the library function the CLIs, policies and benchmarks share."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from tqdm import tqdm


@torch.inference_mode()
def accuracy(model: nn.Module, loader: Iterable, progress: bool = False) -> float:
    """Fraction of correctly classified samples of ``loader`` ((inputs, labels) batches),
    computed on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for images, labels in tqdm(loader, desc="accuracy", unit="batch", disable=not progress, leave=False):
        predicted = model(images.to(device)).argmax(1).cpu()
        correct += int((predicted == labels).sum())
        total += len(labels)
    return correct / total
