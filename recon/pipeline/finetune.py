"""Fine-tuning a low-rank model: labels plus distillation from the dense model, steps that never diverge."""
from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from recon.errors import ConfigError, DataError
from recon.metrics import accuracy
from recon.nn import LowRankModule

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


CLIP = 1.0  # gradient norm clip
DISTILLATION = 0.5  # weight of the KL divergence to the dense model's predictions (the rest: labels)


@contextlib.contextmanager
def only_trainable(model: nn.Module, params: list[nn.Parameter]) -> Iterator[None]:
    """Gradients for ``params`` alone while inside; every ``requires_grad`` flag back after."""
    flags = {p: p.requires_grad for p in model.parameters()}
    chosen = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    try:
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)


def relative_adam(parameters: list[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam whose step size for each tensor is ``lr`` times the tensor's RMS value, so factors
    of very different scales take steps of the same relative size."""
    return torch.optim.Adam([{"params": [p], "lr": lr * float(p.detach().pow(2).mean().sqrt().clamp_min(1e-8))}
                             for p in parameters])


def shuffled_batches(count: int, batch_size: int, generator: torch.Generator, device: torch.device,
                     description: str, progress: bool):
    """Index tensors of one epoch's minibatches over ``count`` samples in a seeded random order,
    with a progress bar."""
    order = torch.randperm(count, generator=generator).to(device)
    return tqdm(order.split(batch_size), desc=description, unit="batch", leave=False, disable=not progress)


def clipped_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, parameters: list[nn.Parameter]) -> None:
    """One optimiser step on ``loss`` with the gradient norm clipped to ``CLIP``."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, CLIP)
    optimizer.step()


def labelled(batch: object, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of one training batch; DataError unless it is such a pair of tensors."""
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2 and all(isinstance(x, torch.Tensor) for x in batch[:2])):
        raise DataError(f"training batch {index} is a {type(batch).__name__}: fine-tuning needs (inputs, labels) "
                        "pairs of tensors (for unlabeled data use calibrate)")
    images, labels = batch[0], batch[1]
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool or labels.ndim != 1 \
            or len(labels) != len(images):
        raise DataError(f"training batch {index}: labels of dtype {labels.dtype} and shape {tuple(labels.shape)}; "
                        f"fine-tuning needs one integer class index per input ({len(images)})")
    return images, labels


def check_labels(logits: torch.Tensor, labels: torch.Tensor, index: int) -> None:
    """DataError unless every label is a class of the model's (N, classes) output."""
    if not (isinstance(logits, torch.Tensor) and logits.ndim == 2):
        raise DataError(f"the model's output for training batch {index} is not (batch, classes) logits: fine-tuning "
                        "trains a classifier with cross-entropy")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= logits.shape[1]:
        raise DataError(f"training batch {index} has labels {low}..{high}, but the model has {logits.shape[1]} classes "
                        f"(labels 0..{logits.shape[1] - 1})")


def finetune(model: nn.Module, train: Iterable, epochs: int, lr: float, which: str = "factors",
             test: Iterable | None = None, seed: int = 0, report: Callable[[str], None] = print,
             teacher: nn.Module | None = None, validation: Iterable | None = None) -> list[float]:
    """Train ``model`` in place with Adam over ``train`` ((inputs, labels) batches); returns the
    ``test`` accuracy before training and after each epoch (empty without ``test``).

    The loss is cross-entropy on the labels, plus (with a ``teacher``, e.g. the dense model)
    the KL divergence to the teacher's predictions, weighted ``DISTILLATION``. ``lr`` is
    relative to each tensor's RMS value (``relative_adam``); CP factors are balanced first
    (``balance_``) and gradients clipped to norm ``CLIP``. With ``validation``, the state after
    the epoch of the best validation accuracy is kept (the state before training included),
    so fine-tuning never leaves the model worse on it than it started.
    """
    if epochs < 1 or not lr > 0:
        raise ConfigError(f"epochs must be >= 1 and lr > 0, got {epochs} and {lr}")
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, LowRankModule):
            module.balance_()
    params = trainable_parameters(model, which)
    if teacher is not None:
        teacher.eval()
    optimizer = relative_adam(params, lr)
    history = [] if test is None else [accuracy(model, test)]
    if history:
        report(f"epoch 0: test accuracy {100 * history[0]:.2f}%")
    best = None if validation is None else (accuracy(model, validation), copy.deepcopy(model.state_dict()), 0)
    with only_trainable(model, params):
        best = _train(model, train, epochs, params, optimizer, which, test, history, report, teacher, validation, best)
    if best is not None and best[2] != epochs:
        model.load_state_dict(best[1])
        report(f"kept the state after epoch {best[2]}: validation accuracy {100 * best[0]:.2f}%")
    return history


def _train(model, train, epochs, params, optimizer, which, test, history, report, teacher, validation, best):
    """The epochs of ``finetune``; returns the best (validation accuracy, state, epoch) or None."""
    device = next(model.parameters()).device
    for epoch in range(1, epochs + 1):
        # training only the factors keeps BatchNorm statistics (the bases file does not carry them)
        model.train(which == "all")
        start = time.perf_counter()
        for index, batch in enumerate(tqdm(train, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False)):
            images, labels = labelled(batch, index)
            images, labels = images.to(device), labels.to(device)
            logits = model(images)
            check_labels(logits, labels, index)
            loss = F.cross_entropy(logits, labels)
            if teacher is not None:
                with torch.no_grad():
                    target = F.log_softmax(teacher(images), dim=1)
                kl = F.kl_div(F.log_softmax(logits, dim=1), target, log_target=True, reduction="batchmean")
                loss = (1 - DISTILLATION) * loss + DISTILLATION * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP)
            optimizer.step()
        model.eval()
        if best is not None:
            score = accuracy(model, validation)
            if score > best[0]:
                best = (score, copy.deepcopy(model.state_dict()), epoch)
        if test is not None:
            history.append(accuracy(model, test))
            report(f"epoch {epoch}: test accuracy {100 * history[-1]:.2f}% ({time.perf_counter() - start:.0f} s)")
    return best
