"""Where the CLIs get models and data: the bundled zoo or ``package.module:factory`` specs."""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from recon import zoo


def _import_factory(spec: str) -> Callable:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{spec!r} is neither a bundled model ({', '.join(zoo.BUNDLED)}) nor of the form "
                         "package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # any import failure is reported the same way, with its cause
        raise ImportError(f"cannot import {module_name!r} for {spec!r}: {err}") from err
    if not hasattr(module, attribute):
        raise ImportError(f"module {module_name!r} has no attribute {attribute!r} (from {spec!r})")
    return getattr(module, attribute)


def load_model(spec: str, weights: Path | None = None) -> nn.Module:
    """A bundled model by name, or ``factory()`` from ``package.module:factory`` with ``weights``
    (a state dict file) loaded; always in eval mode."""
    if spec in zoo.BUNDLED:
        if weights is not None:
            raise ValueError("--weights is for --model package.module:factory; bundled models carry their own")
        return zoo.load_model(spec)
    factory = _import_factory(spec)
    try:
        model = factory()
    except Exception as err:  # a user factory can fail in any way; report it with its cause
        raise ValueError(f"model factory {spec} failed: {type(err).__name__}: {err}") from err
    if not isinstance(model, nn.Module):
        raise TypeError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"weights {weights} do not match the model from {spec}: {err}") from err
    return model.eval()


def load_batches(spec: str) -> Iterable:
    """An iterable of input batches (or (inputs, labels) pairs) from ``package.module:factory``."""
    return _import_factory(spec)()
