"""What a model and an example input must be for recon to work on them, checked before
anything slow: an eager ``nn.Module`` with real weights, which ``copy.deepcopy`` can copy
(``compress`` never edits the user's model), and a finite floating-point batch."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import prune

from recon.errors import ConfigError, DataError
from recon.inputs import Batch, Inputs, keyword_inputs


def _pruned(model: nn.Module) -> list[str]:
    """Names of the modules carrying a ``torch.nn.utils.prune`` reparametrisation."""
    return [name or type(model).__name__ for name, module in model.named_modules()
            if any(isinstance(hook, prune.BasePruningMethod) for hook in module._forward_pre_hooks.values())]


def check_model(model: object, what: str = "model") -> nn.Module:
    """``model`` if recon can work on it; ConfigError saying what is wrong and what to do."""
    if isinstance(model, torch.jit.ScriptModule):
        raise ConfigError(f"{what} is a TorchScript (scripted or traced) module: recon needs the eager nn.Module, "
                          "whose layers it can replace; give that, then script or trace the result")
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


def check_made_from(dense: nn.Module, names: list[str]) -> None:
    """ConfigError unless ``dense`` has every layer of ``names`` (those of a low-rank model that
    is to be compared with the dense model it was made from)."""
    present = {name for name, _ in dense.named_modules()}
    missing = [name for name in names if name not in present]
    if missing:
        raise ConfigError(f"dense has no layer {', '.join(missing[:4])}: give the model the low-rank one was made from")


def copied(model: nn.Module) -> nn.Module:
    """A deep copy of a checked ``model``; ConfigError when it cannot be copied."""
    try:
        return copy.deepcopy(model)
    except (RuntimeError, TypeError) as err:  # non-leaf tensors (weight_norm, parametrisations) and the like
        raise ConfigError(f"the model cannot be copied with copy.deepcopy ({err}); recon works on a copy and never "
                          "edits the model given") from err


def check_example(example: object, what: str) -> Batch:
    """``example`` if it is a batch a model can be timed and probed on: a finite floating-point
    tensor with real values, batch dimension first, or a dict / ``recon.Inputs`` of tensors
    (keyword inputs) holding one; ConfigError otherwise."""
    if isinstance(example, (dict, Inputs)):
        try:
            return keyword_inputs(example, what)
        except DataError as err:
            raise ConfigError(str(err)) from None
    if not isinstance(example, torch.Tensor):
        raise ConfigError(f"{what} must be a torch.Tensor or a dict of tensors (a batch the model takes), got "
                          f"{type(example).__name__}")
    if not example.is_floating_point() or example.ndim < 2 or example.is_meta or not bool(torch.isfinite(example).all()):
        raise ConfigError(f"{what} must be a finite floating-point batch (batch dimension first) with real values, "
                          f"like the model's inputs; got {example.dtype} of shape {tuple(example.shape)} on "
                          f"{example.device}")
    return example
