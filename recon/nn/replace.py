"""Module surgery by qualified name, the one way recon puts a module into a model."""
from __future__ import annotations

from torch import nn


def replace_layer(model: nn.Module, name: str, replacement: nn.Module) -> nn.Module:
    """Put ``replacement`` where the submodule ``name`` is; returns the module it replaced."""
    parent_name, _, attribute = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attribute)
    setattr(parent, attribute, replacement)
    return old
