"""Fine-tuning a low-rank model, and the bases file records of what it learned."""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from recon.errors import ConfigError
from recon.metrics import accuracy
from recon.nn import LowRankModule
from recon.record import LayerRecord

TRAINABLE = ("factors", "all")


def trainable_parameters(model: nn.Module, which: str) -> list[nn.Parameter]:
    """Parameters to train: those of the low-rank modules ("factors"), or all."""
    if which not in TRAINABLE:
        raise ConfigError(f"which must be one of {', '.join(TRAINABLE)}, got {which!r}")
    if which == "all":
        return list(model.parameters())
    params = [p for m in model.modules() if isinstance(m, LowRankModule) for p in m.parameters()]
    if not params:
        raise ConfigError("the model has no low-rank layer: nothing to fine-tune with 'factors'")
    return params


def finetune(model: nn.Module, train: Iterable, epochs: int, lr: float, which: str = "factors",
             test: Iterable | None = None, seed: int = 0, report: Callable[[str], None] = print) -> list[float]:
    """Train ``model`` in place with Adam on cross-entropy over ``train`` ((inputs, labels)
    batches); returns the ``test`` accuracy before training and after each epoch (empty
    without ``test``)."""
    if epochs < 1 or not lr > 0:
        raise ConfigError(f"epochs must be >= 1 and lr > 0, got {epochs} and {lr}")
    torch.manual_seed(seed)
    params = trainable_parameters(model, which)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    device = next(model.parameters()).device
    history = [] if test is None else [accuracy(model, test)]
    if history:
        report(f"epoch 0: test accuracy {100 * history[0]:.2f}%")
    for epoch in range(1, epochs + 1):
        model.train()
        start = time.perf_counter()
        for images, labels in tqdm(train, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False):
            loss = F.cross_entropy(model(images.to(device)), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        if test is not None:
            history.append(accuracy(model, test))
            report(f"epoch {epoch}: test accuracy {100 * history[-1]:.2f}% ({time.perf_counter() - start:.0f} s)")
    return history


def tuned_records(dense: nn.Module, tuned: nn.Module, records: dict[str, LayerRecord]) -> list[LayerRecord]:
    """The records of ``tuned``'s low-rank layers, holding its (fine-tuned) modules; the weight
    error is measured again against ``dense``, the output error is no longer known."""
    updated = []
    for name, record in records.items():
        module = tuned.get_submodule(name)
        weight = dense.get_submodule(name).weight.detach().double().cpu()
        lost = float(((module.dense_weight().detach().double().cpu() - weight) ** 2).sum() / (weight ** 2).sum())
        updated.append(dataclasses.replace(record, module=module, mode="finetuned", filter_energy_lost=lost,
                                           output_variance_lost=math.nan))
    return updated
