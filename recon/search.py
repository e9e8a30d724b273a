"""Naive rank search: the smallest bases per layer that stay within an accuracy budget.

Each layer is searched on its own by bisection over the number of bases: fit (the same
settings as the final fit), replace only that layer, measure accuracy on the validation
split (the last 5,000 training images, never the test set), and keep the smallest count
whose drop from the dense model is at most the layer's share of the budget (the budget
divided evenly between the layers). Accuracy is not exactly monotone in the count, so this
finds a count at which the budget holds, not a guaranteed minimum.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

from torch import nn
from torch.utils.data import DataLoader

from recon.evaluate import accuracy
from recon.fitting import FitSettings, fit_layer
from recon.surgery import get_conv
from solvers import scheme1, scheme2


def search_layer(model: nn.Module, name: str, settings: FitSettings, batches: Callable[[], Iterable] | None,
                 input_size: tuple[int, int], validation: DataLoader, dense_accuracy: float, budget: float,
                 report: Callable[[str], None] = print) -> int:
    """Smallest bases for ``name`` (bisection) with validation accuracy >= dense - ``budget``."""
    shape = tuple(get_conv(model, name).weight.shape)
    low, high = 1, (scheme1.max_bases(shape) if settings.scheme == 1 else scheme2.max_rank(shape))
    while low < high:
        middle = (low + high) // 2
        approx = copy.deepcopy(model)
        fit_layer(model, approx, name, middle, settings, batches, input_size)
        drop = dense_accuracy - accuracy(approx, validation)
        report(f"search {name}: {middle} bases -> validation drop {100 * drop:+.2f} points")
        if drop <= budget:
            high = middle
        else:
            low = middle + 1
    return low


def search_ranks(model: nn.Module, layers: list[str], settings: FitSettings, batches, sizes, validation: DataLoader,
                 budget: float, report: Callable[[str], None] = print) -> dict[str, int]:
    """Bases per layer within ``budget`` (a fraction, e.g. 0.01 for one point) in total."""
    if not 0 < budget < 1:
        raise ValueError(f"the accuracy budget must lie between 0 and 100 points, got {100 * budget:g}")
    dense_accuracy = accuracy(model, validation)
    share = budget / len(layers)
    return {name: search_layer(model, name, settings, batches, sizes[name], validation, dense_accuracy, share, report)
            for name in layers}
