"""Which layers to replace: names, "all", regular expressions, or a filter function.

``layers`` may be:
* ``"all"``: every layer the method can replace (the others are reported as skipped, with why);
* a qualified name (``"conv2"``, ``"layer3.0.conv1"``): that layer, which must be eligible;
* a regular expression (a compiled pattern, or a string that names no layer): every eligible
  layer whose full name matches;
* a filter function ``fn(module, name) -> bool`` (torchao's ``filter_fn`` order): every
  eligible layer it accepts;
* a list of names and patterns.
The result is in the model's registration order.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from torch import nn

from recon.errors import ConfigError, LayerError
from recon.methods import Candidates, Method

LayerSpec = str | re.Pattern | Callable[[nn.Module, str], bool] | Sequence[str | re.Pattern]


def _names_by_module(model: nn.Module) -> dict[int, list[str]]:
    """id(module) -> every name it is registered under (more than one for a shared module)."""
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    return names


def _refusal(module: nn.Module, method: Method | Candidates, names: dict[int, list[str]]) -> str | None:
    """Why ``method`` cannot replace ``module`` of the model whose ``_names_by_module`` is ``names``."""
    shared = names.get(id(module), [])
    if len(shared) > 1:
        return (f"the same module is registered as {', '.join(shared)}: replaced under one name, the others would "
                "stay dense, and its statistics would mix every call")
    return method.eligible(module)


def refusals(model: nn.Module, method: Method | Candidates) -> dict[str, str]:
    """Why ``method`` cannot replace each Conv2d / Linear of ``model`` it refuses, by name."""
    names = _names_by_module(model)
    reasons = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            reason = _refusal(module, method, names)
            if reason is not None:
                reasons[name] = reason
    return reasons


def eligible_layers(model: nn.Module, method: Method | Candidates,
                    names: dict[int, list[str]] | None = None) -> list[str]:
    """Qualified names of every layer ``method`` can replace, in registration order (``names``:
    the model's ``_names_by_module``, computed when not given)."""
    names = _names_by_module(model) if names is None else names
    return [name for name, module in model.named_modules()
            if name and isinstance(module, (nn.Conv2d, nn.Linear)) and _refusal(module, method, names) is None]


def _by_name(model: nn.Module, name: str, method: Method | Candidates, eligible: list[str],
             names: dict[int, list[str]]) -> str:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise LayerError(f"model has no layer {name!r}; layers {method.name} can replace: "
                         f"{', '.join(eligible) or 'none'}") from None
    reason = _refusal(module, method, names)
    if reason is not None:
        raise LayerError(f"layer {name!r} cannot be replaced by {method.name}: {reason}")
    return name


def _by_pattern(pattern: re.Pattern, eligible: list[str], method: Method | Candidates) -> list[str]:
    matched = [name for name in eligible if pattern.fullmatch(name)]
    if not matched:
        raise LayerError(f"no layer that {method.name} can replace matches {pattern.pattern!r}; "
                         f"those it can replace: {', '.join(eligible) or 'none'}")
    return matched


def _module_names(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_modules()}


def select_layers(model: nn.Module, layers: LayerSpec, method: Method | Candidates) -> list[str]:
    """The names that ``layers`` selects for ``method`` (see the module docstring)."""
    shared = _names_by_module(model)
    eligible = eligible_layers(model, method, shared)
    if callable(layers) and not isinstance(layers, re.Pattern):
        chosen = {name for name in eligible if layers(model.get_submodule(name), name)}
    else:
        if not isinstance(layers, (str, re.Pattern, Sequence, set)):
            raise ConfigError(f"layers must be a name, \"all\", a regular expression, a function (module, name) -> "
                              f"bool or a list of names and patterns; got {type(layers).__name__}")
        specs = [layers] if isinstance(layers, (str, re.Pattern)) else list(layers)
        if not specs:
            raise ConfigError("no layers were named")
        chosen = set()
        names = _module_names(model)
        for spec in specs:
            if spec == "all":
                chosen.update(eligible)
            elif isinstance(spec, re.Pattern):
                chosen.update(_by_pattern(spec, eligible, method))
            elif not isinstance(spec, str):
                raise ConfigError(f"a layer is named by a string or a compiled pattern, got {type(spec).__name__}")
            elif spec in names or not _looks_like_pattern(spec):
                chosen.add(_by_name(model, spec, method, eligible, shared))
            else:
                chosen.update(_by_pattern(_compile(spec), eligible, method))
    if not chosen:
        reasons = refusals(model, method)
        detail = "; ".join(f"{name}: {why}" for name, why in list(reasons.items())[:6])
        raise LayerError(f"no layer selected for {method.name}" + (f" ({detail})" if detail else
                                                                     ": the model has no Conv2d or Linear layer"))
    return [name for name, _ in model.named_modules() if name in chosen]


def _looks_like_pattern(text: str) -> bool:
    return any(char in text for char in "*+?[](){}|^$\\")


def _compile(text: str) -> re.Pattern:
    try:
        return re.compile(text)
    except re.error as err:
        raise ConfigError(f"{text!r} names no layer and is not a valid regular expression ({err})") from None
