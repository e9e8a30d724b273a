"""Find convolutions by qualified name and swap them for low-rank modules in place."""
from __future__ import annotations

import os

import torch
from torch import nn

from recon.guard import guard_replacements
from recon.modules import ConvGeometry, LowRankExpConv
from recon.store import BasesFileError, LayerBases, PeerLayer, read_bases, weight_sha256


def is_eligible(module: nn.Module) -> bool:
    """A conv the schemes can replace: plain Conv2d, one group, zero padding, kernel > 1x1."""
    return (isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
            and tuple(module.kernel_size) != (1, 1))


def eligible_layers(model: nn.Module) -> list[str]:
    """Qualified names of every eligible conv of ``model``, in registration order."""
    return [name for name, module in model.named_modules() if is_eligible(module)]


def _submodule(model: nn.Module, name: str, kind: type, hint: str = "") -> nn.Module:
    """The submodule ``name``, which must be a ``kind``; KeyError/TypeError (plus ``hint``) if not."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise KeyError(f"model has no layer {name!r}{hint}") from None
    if not isinstance(module, kind):
        raise TypeError(f"layer {name!r} is a {type(module).__name__}, not an nn.{kind.__name__}{hint}")
    return module


def get_conv(model: nn.Module, name: str) -> nn.Conv2d:
    """The eligible conv called ``name`` (``conv2``, ``features.3``, ``layer3.0.conv1``)."""
    module = _submodule(model, name, nn.Conv2d, f"; eligible layers: {', '.join(eligible_layers(model))}")
    if tuple(module.kernel_size) == (1, 1):
        raise ValueError(f"layer {name!r} has a 1x1 kernel: nothing to separate")
    if not is_eligible(module):
        raise ValueError(f"layer {name!r} (groups={module.groups}, padding_mode={module.padding_mode!r}) "
                         "cannot be replaced: only groups=1 with zero padding is supported")
    return module


def replace_layer(model: nn.Module, name: str, replacement: nn.Module) -> nn.Module:
    """Put ``replacement`` where the submodule ``name`` is; returns the module it replaced."""
    parent_name, _, attribute = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attribute)
    setattr(parent, attribute, replacement)
    return old


def load_bases(path: str | os.PathLike) -> dict[str, LowRankExpConv]:
    """The low-rank modules of a bases file, by qualified layer name."""
    return {name: layer.to_module() for name, layer in read_bases(path).layers.items()}


def get_linear(model: nn.Module, name: str) -> nn.Linear:
    """The ``nn.Linear`` called ``name``."""
    return _submodule(model, name, nn.Linear)


def check_layer_matches(model: nn.Module, layer: LayerBases | PeerLayer, allow_mismatch: bool = False) -> nn.Module:
    """The layer that ``layer`` was fitted to, after checking its shape and weight hash."""
    if getattr(layer, "features", None) is not None:
        conv = get_linear(model, layer.name)
        if (conv.in_features, conv.out_features) != layer.features:
            raise BasesFileError(f"layer {layer.name!r}: the model's Linear {conv.in_features}->{conv.out_features} "
                                 f"does not match the bases' {layer.features[0]}->{layer.features[1]}")
    else:
        conv = get_conv(model, layer.name)
    if layer.geometry is not None and ConvGeometry.of(conv) != layer.geometry:
        raise BasesFileError(f"layer {layer.name!r}: the model's conv {ConvGeometry.of(conv)} does not "
                             f"match the bases' {layer.geometry}")
    if not allow_mismatch and weight_sha256(conv.weight) != layer.weight_sha256:
        raise BasesFileError(
            f"layer {layer.name!r}: the model's weights differ from those the bases were fitted to "
            "(weight_sha256 mismatch); refit, or pass allow_mismatch=True if that is intended")
    return conv


def apply_bases(model: nn.Module, path: str | os.PathLike, allow_mismatch: bool = False,
                example_input: torch.Tensor | None = None, min_speedup: float = 1.05,
                channels_last: bool = False) -> nn.Module:
    """Replace every layer named in the bases file by its ``LowRankExpConv``, in place.

    Each replaced conv must have the geometry and (unless ``allow_mismatch``) the weights
    the bases were fitted to. With ``example_input`` the never-slower guard runs: each
    low-rank module is timed against its dense conv on the real input shape and the dense
    conv stays unless the low-rank one is ``min_speedup`` times faster (timed in the
    channels_last memory format when ``channels_last``); every decision is logged to the
    ``recon`` logger. Returns ``model``.
    """
    bases = read_bases(path)
    replacements = {}
    for layer in bases.layers.values():
        conv = check_layer_matches(model, layer, allow_mismatch)
        replacements[layer.name] = layer.to_module().to(device=conv.weight.device, dtype=conv.weight.dtype).eval()
    if example_input is not None:
        decisions = guard_replacements(model, replacements, example_input, min_speedup, channels_last=channels_last)
        replacements = {d.layer: replacements[d.layer] for d in decisions if d.kept}
    for name, module in replacements.items():
        replace_layer(model, name, module)
    return model
