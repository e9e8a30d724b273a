"""What a model must be for recon to work on it, checked before anything slow: an eager
``nn.Module`` with real weights, which ``copy.deepcopy`` can copy (``compress`` never edits
the user's model)."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import prune

from recon.errors import ConfigError


def _pruned(model: nn.Module) -> list[str]:
    """Names of the modules carrying a ``torch.nn.utils.prune`` reparametrisation."""
    return [name or type(model).__name__ for name, module in model.named_modules()
            if any(isinstance(hook, prune.BasePruningMethod) for hook in module._forward_pre_hooks.values())]


def check_model(model: object, what: str = "model") -> nn.Module:
    """``model`` if recon can work on it; ConfigError saying what is wrong and what to do."""
    if isinstance(model, torch.jit.ScriptModule):
        raise ConfigError(f"{what} is a TorchScript (scripted or traced) module: recon replaces layers of the eager "
                          "nn.Module; compress that, then script or trace the result")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{what} must be a torch.nn.Module, got {type(model).__name__}")
    parameters = list(model.parameters())
    if not parameters:
        raise ConfigError(f"{what} has no parameters: it has no Conv2d or Linear layer to replace")
    if any(tensor.is_meta for tensor in parameters + list(model.buffers())):
        raise ConfigError(f"{what} has weights on the meta device, which hold no values: load its weights first "
                          "(e.g. model.to_empty(device='cpu') then load_state_dict)")
    pruned = _pruned(model)
    if pruned:
        raise ConfigError(f"{what} is pruned with torch.nn.utils.prune ({', '.join(pruned[:4])}): make the pruning "
                          "permanent first with prune.remove(module, 'weight') for each of them")
    return model


def copied(model: nn.Module) -> nn.Module:
    """A deep copy of a checked ``model``; ConfigError when it cannot be copied."""
    try:
        return copy.deepcopy(model)
    except (RuntimeError, TypeError) as err:  # non-leaf tensors (weight_norm, parametrisations) and the like
        raise ConfigError(f"the model cannot be copied with copy.deepcopy ({err}); recon works on a copy and never "
                          "edits the model given") from err
