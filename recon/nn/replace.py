"""Module surgery by qualified name, the one way recon puts a module into a model, and the
way back to dense layers."""
from __future__ import annotations

import logging

from torch import nn

from recon.nn.base import LowRankModule

LOG = logging.getLogger("recon")


def replace_layer(model: nn.Module, name: str, replacement: nn.Module) -> nn.Module:
    """Put ``replacement`` where the submodule ``name`` is; returns the module it replaced."""
    parent_name, _, attribute = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attribute)
    setattr(parent, attribute, replacement)
    return old


def restore_dense(model: nn.Module) -> nn.Module:
    """Every low-rank module of ``model`` replaced, in place, by the ``nn.Conv2d`` / ``nn.Linear``
    it computes (``LowRankModule.to_dense``): the model computes what it computed, with dense
    layers again (e.g. to export, or to compress it anew). A model without low-rank modules is
    left as it is, with a warning. Returns ``model``."""
    names = [name for name, module in model.named_modules() if isinstance(module, LowRankModule)]
    if not names:
        LOG.warning("warning: restore_dense: the model has no low-rank module; nothing was changed")
    for name in names:
        module = model.get_submodule(name)
        dense = module.to_dense()
        dense.train(module.training)
        replace_layer(model, name, dense)
    return model
