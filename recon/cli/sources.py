"""Where the commands get models and data: the bundled zoo or ``package.module:factory`` specs."""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recon import data, zoo
from recon.errors import ConfigError, DataError, ReconError
from recon.model_checks import check_model


def _import_factory(spec: str) -> Callable:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"{spec!r} is neither a bundled model ({', '.join(zoo.BUNDLED)}) nor of the form "
                          "package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # any import failure is reported the same way, with its cause
        raise ConfigError(f"cannot import {module_name!r} for {spec!r}: {err}") from err
    if not hasattr(module, attribute):
        raise ConfigError(f"module {module_name!r} has no attribute {attribute!r} (from {spec!r})")
    factory = getattr(module, attribute)
    if not callable(factory):
        raise ConfigError(f"{spec} is a {type(factory).__name__}, not a function to call")
    return factory


def _state_dict(weights: Path) -> dict:
    """The state dict saved in ``weights``, or a ConfigError saying what the file is instead."""
    if weights.is_dir():
        raise ConfigError(f"--weights {weights} is a directory; give the file saved by torch.save(model.state_dict())")
    if not weights.is_file():
        raise ConfigError(f"--weights file {weights} does not exist")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # a file that is not a torch save fails in many ways; name the file instead
        raise ConfigError(f"--weights {weights} is not a torch state dict file ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"--weights {weights} holds a {type(state).__name__}, not a state dict (name -> tensor)")
    return state


def is_bundled(spec: str) -> bool:
    return spec in zoo.BUNDLED


def load_model(spec: str, weights: Path | None = None) -> nn.Module:
    """A bundled model by name, or ``factory()`` from ``package.module:factory`` with ``weights``
    (a state dict file) loaded; always in eval mode."""
    if is_bundled(spec):
        if weights is not None:
            raise ConfigError("--weights is for --model package.module:factory; bundled models carry their own")
        return zoo.load_model(spec)
    factory = _import_factory(spec)
    try:
        model = factory()
    except Exception as err:  # a user factory can fail in any way; report it with its cause
        raise ConfigError(f"model factory {spec} failed: {type(err).__name__}: {err}") from err
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    check_model(model, f"the model from {spec}")
    if weights is not None:
        try:
            model.load_state_dict(_state_dict(weights))
        except RuntimeError as err:
            raise ConfigError(f"weights {weights} do not match the model from {spec}: {err}") from err
    return model.eval()


def data_factory(spec: str) -> Callable[[], Iterable]:
    """The data of ``package.module:factory``, the factory called once here so that what it
    returns is checked before any work: a re-iterable is read on every pass, an iterator (a
    generator) makes every pass call the factory again."""
    factory = _import_factory(spec)
    try:
        batches = factory()
    except Exception as err:  # a user factory can fail in any way; report it with its cause
        raise DataError(f"data factory {spec} failed: {type(err).__name__}: {err}") from err
    if isinstance(batches, (str, bytes, Mapping, torch.Tensor, np.ndarray)) or not isinstance(batches, Iterable):
        raise DataError(f"--data {spec} returned {_describe(batches)}, not an iterable of input batches: return a "
                        "list or DataLoader of tensors or (inputs, labels) pairs, or a generator of them")
    return factory if isinstance(batches, Iterator) else lambda: batches


def _describe(value: object) -> str:
    """What a value is, in a few words."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"one {type(value).__name__} of shape {tuple(value.shape)}"
    text = repr(value)
    return f"a value of type {type(value).__name__}" + (f" ({text})" if len(text) <= 40 else "")


def fashion_mnist(split: str, samples: int | None, batch_size: int = 250, option: str = "--samples") -> Callable:
    """A factory of Fashion-MNIST loaders (``split`` in train, validation, test), first ``samples``
    images; ``option`` is what a too large ``samples`` is called in the error."""
    if split == "train" and samples is not None and samples > data.fit_split_size():
        raise ConfigError(f"{option} must be <= {data.fit_split_size()}: the last {data.VALIDATION_SIZE} training "
                          "images are the validation split")
    return lambda: data.loader(split, batch_size=batch_size, limit=samples)


def input_size(spec: str) -> tuple[int, ...] | None:
    """One input sample's shape for a bundled model (None for user models)."""
    return zoo.BUNDLED[spec].input_size if is_bundled(spec) else None


def check_input_size(model: nn.Module, size: tuple[int, ...]) -> None:
    """Run ``model`` once on zeros of ``size`` (one sample, C x H x W): a ConfigError when its
    first Conv2d takes another channel count, or when the model fails on that input."""
    convs = {module: name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}
    shown = "x".join(map(str, size))
    check = _first_conv_check(convs, shown)  # one hook shared by all, so that only the first call is checked
    hooks = [module.register_forward_pre_hook(check) for module in convs]
    parameter = next(model.parameters())
    try:
        with torch.no_grad():
            model(torch.zeros(1, *size, device=parameter.device, dtype=parameter.dtype))
    except ReconError:
        raise
    except Exception as err:  # a model can fail on an input in any way; say which input
        raise ConfigError(f"the model fails on one input of --input-size {shown}: {type(err).__name__}: {err}") \
            from err
    finally:
        for hook in hooks:
            hook.remove()


def _first_conv_check(convs: dict[nn.Module, str], shown: str) -> Callable:
    """A forward pre-hook for every Conv2d of ``convs`` refusing an input to the first one called
    that has another channel count than the layer takes."""
    called: list[nn.Module] = []

    def check(module: nn.Module, inputs: tuple) -> None:
        if not called and inputs[0].ndim > 1 and inputs[0].shape[1] != module.in_channels:
            raise ConfigError(f"--input-size {shown} has {inputs[0].shape[1]} channel(s), but the model's first "
                              f"Conv2d ({convs[module]}) takes {module.in_channels}")
        called.append(module)

    return check
