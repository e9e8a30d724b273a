"""BatchNorm folding: a convolution whose output goes straight into a BatchNorm (in eval mode)
computes, with that BatchNorm, one affine convolution

    y = gamma * (W x + b - mean) / sqrt(var + eps) + beta  =  (s W) x + s (b - mean) + beta,
    s = gamma / sqrt(var + eps),

so the pair can be replaced by a convolution with weight s W and that bias, the BatchNorm by
``nn.Identity``. It is the error of that folded convolution that reaches the next layer, so it
is what recon fits when asked to fold, and folding also removes the BatchNorm's own run time
(a speedup any runtime gets: speed figures compare against a dense model folded the same way).

Pairs are found in the graph ``torch.fx`` traces, never from attribute names. Folding is
refused, naming the layer, when it would not be exact: the BatchNorm is in training mode, has
no running statistics, is called more than once, or the convolution is called more than once
or its output is used by anything besides the BatchNorm.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx, nn

from recon.errors import ConfigError, LayerError
from recon.nn.replace import replace_layer


@dataclass
class BatchNormPairs:
    """``folds``: conv name -> name of the BatchNorm that folds into it; ``refused``: conv name ->
    why the BatchNorm after it cannot be folded exactly."""

    folds: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


def _calls(graph: fx.Graph) -> dict[str, list[fx.Node]]:
    """The call_module nodes of each module name."""
    calls: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls.setdefault(str(node.target), []).append(node)
    return calls


def _refusal(model: nn.Module, conv: str, norm: str, calls: dict[str, list[fx.Node]]) -> str | None:
    """Why folding BatchNorm ``norm`` into ``conv`` would not be exact, or None."""
    bn = model.get_submodule(norm)
    if len(calls[norm]) > 1:
        return f"BatchNorm {norm!r} is shared: it is called {len(calls[norm])} times"
    if len(calls[conv]) > 1:
        return f"the convolution is called {len(calls[conv])} times"
    if len(calls[conv][0].users) > 1:
        return f"its output feeds {len(calls[conv][0].users)} operations besides BatchNorm {norm!r}"
    if bn.training:
        return f"BatchNorm {norm!r} is in training mode (its output depends on the batch); call model.eval()"
    if bn.running_mean is None or bn.running_var is None:
        return f"BatchNorm {norm!r} keeps no running statistics (track_running_stats=False)"
    if bn.num_features != model.get_submodule(conv).out_channels:
        return f"BatchNorm {norm!r} has {bn.num_features} channels, the convolution {model.get_submodule(conv).out_channels}"
    return None


def batchnorm_pairs(model: nn.Module, layers: list[str] | None = None) -> BatchNormPairs:
    """The convolutions of ``model`` (of ``layers`` when given) whose output goes straight into
    a BatchNorm2d, split into those that fold exactly and those that do not (with why)."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as err:  # tracing runs the user's forward symbolically: any failure means no graph
        raise ConfigError(f"fold_batchnorm needs the model's graph, and torch.fx cannot trace "
                          f"{type(model).__name__} ({type(err).__name__}: {err}); fit without folding") from err
    calls = _calls(graph)
    pairs = BatchNormPairs()
    for norm, nodes in calls.items():
        if not isinstance(model.get_submodule(norm), nn.BatchNorm2d):
            continue
        for node in nodes:
            source = node.args[0] if node.args else None
            if not (isinstance(source, fx.Node) and source.op == "call_module"
                    and isinstance(model.get_submodule(str(source.target)), nn.Conv2d)):
                continue
            conv = str(source.target)
            if layers is not None and conv not in layers:
                continue
            reason = _refusal(model, conv, norm, calls)
            if reason is None:
                pairs.folds[conv] = norm
            else:
                pairs.refused[conv] = reason
    return pairs


@torch.no_grad()
def folded_conv(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """A copy of ``conv`` with ``norm`` (eval mode) folded into its weight and bias, computed
    in float64 and stored in the conv's dtype and device."""
    scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps) if norm.affine else \
        1 / torch.sqrt(norm.running_var.double() + norm.eps)
    shift = norm.bias.double() if norm.affine else torch.zeros_like(scale)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    weight = conv.weight.double() * scale.reshape(-1, *[1] * (conv.weight.ndim - 1))
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                       device=conv.weight.device, dtype=conv.weight.dtype)
    folded.weight.copy_(weight)
    folded.bias.copy_((bias - norm.running_mean.double()) * scale + shift)
    return folded.eval()


def fold_batchnorms(model: nn.Module, folds: dict[str, str]) -> nn.Module:
    """Fold each BatchNorm of ``folds`` (conv name -> BatchNorm name) into its conv, in place:
    the conv becomes the folded conv, the BatchNorm ``nn.Identity``. Returns ``model``."""
    for conv, norm in folds.items():
        replace_layer(model, conv, folded_conv(model.get_submodule(conv), model.get_submodule(norm)))
        replace_layer(model, norm, nn.Identity())
    return model


def folded_layers(model: nn.Module, folds: dict[str, str]) -> dict[str, nn.Conv2d]:
    """Each named conv of ``model`` with the BatchNorm ``folds`` names folded in (the layer its
    bases were fitted to), after checking in the model's graph that the BatchNorm follows it
    and folds exactly; ``model`` is not changed."""
    if not folds:
        return {}
    found = batchnorm_pairs(model, list(folds))
    layers = {}
    for conv, norm in folds.items():
        if found.folds.get(conv) != norm:
            why = found.refused.get(conv, f"in this model {norm!r} does not take the layer's output")
            raise LayerError(f"layer {conv!r}: its bases were fitted with BatchNorm {norm!r} folded in, but {why}")
        layers[conv] = folded_conv(model.get_submodule(conv), model.get_submodule(norm))
    return layers
