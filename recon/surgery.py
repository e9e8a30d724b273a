"""Put low-rank modules into a model by qualified layer name, after checking that each one
belongs where it goes."""
from __future__ import annotations

import logging
import math
import os

import torch
from torch import nn

from recon import methods
from recon.bench.guard import MIN_SPEEDUP, guard_replacements
from recon.errors import BasesFileError, ConfigError, LayerError, ReconError
from recon.folding import folded_layers
from recon.inputs import Batch, describe, moved, run
from recon.io.bases_file import check_path, read_bases
from recon.io.hashing import layer_sha256
from recon.model_checks import check_example, check_model
from recon.nn import LowRankModule
from recon.nn.replace import replace_layer
from recon.record import LayerRecord, error_changed, filter_energy_lost

LOG = logging.getLogger("recon")
IMPLAUSIBLE_ENERGY_LOST = 100.0  # factors whose weights are this far from the layer's (||W_hat - W|| > 10 ||W||) are damage
MISMATCH_HINT = "refit, or pass allow_mismatch=True (--allow-mismatch on the command line) if that is intended"
HALF_CASTS = {torch.float16: ".half()", torch.bfloat16: ".bfloat16()"}  # the casts a layer's weights can lose bits in


def load_bases(path: str | os.PathLike) -> dict[str, LowRankModule]:
    """The low-rank modules of a bases file, by qualified layer name."""
    return {name: record.module for name, record in read_bases(path).layers.items()}


def check_layer_matches(model: nn.Module, record: LayerRecord, allow_mismatch: bool = False,
                        layer: nn.Module | None = None) -> nn.Module:
    """The layer of ``model`` that ``record`` was fitted to (or ``layer``, e.g. that layer with
    its BatchNorm folded in), after checking that it exists, that the record's method can
    replace it, its geometry, its weight and bias hashes, and that the stored factors reproduce
    the error recorded when they were fitted."""
    at = f"layer {record.name!r}"
    try:
        layer = layer if layer is not None else model.get_submodule(record.name)
    except AttributeError:
        raise LayerError(f"{at} of the bases file is not in the model") from None
    method = methods.get(record.method)
    reason = method.eligible(layer)
    if reason is not None:
        raise LayerError(f"{at}: the model's layer cannot take {record.method} bases: {reason}")
    if method.geometry(layer) != record.geometry:
        raise LayerError(f"{at}: the model's layer {method.geometry(layer)} does not match the bases' {record.geometry}")
    if layer.bias is not None and record.module.bias is None:
        raise BasesFileError(f"{at}: the model's layer has a bias but the bases have none (field 'bias' missing)")
    recomputed = filter_energy_lost(layer, record.module)
    if not recomputed <= IMPLAUSIBLE_ENERGY_LOST:
        raise BasesFileError(f"{at}: the stored factors compose weights that lose {recomputed:.4g} of the layer's "
                             f"weight energy (||W_hat - W|| > {IMPLAUSIBLE_ENERGY_LOST ** 0.5:g} ||W||): the file is "
                             f"damaged; refit (allow_mismatch does not accept this)")
    if not allow_mismatch:
        _check_hashes(at, layer, record, recomputed)
    return layer


def _check_hashes(at: str, layer: nn.Module, record: LayerRecord, recomputed: float) -> None:
    """The layer's weight and bias are those ``record`` was fitted to, and its factors lose of them
    what was recorded (``recomputed``)."""
    weight_hash, bias_hash = layer_sha256(layer)
    if weight_hash != record.weight_sha256:
        raise _weights_differ(at, layer, record, recomputed)
    if record.bias_sha256 is not None and bias_hash != record.bias_sha256:
        raise BasesFileError(f"{at}: the model's bias differs from the one the bases were fitted to "
                             f"(bias_sha256 mismatch); {MISMATCH_HINT}")
    if record.bias_sha256 is None and layer.bias is not None:
        LOG.warning("warning: %s: the bases file (schema v1) records no bias hash, so a bias changed since the fit "
                    "cannot be detected; re-save it with this recon to record one", at)
    if error_changed(record, recomputed):
        raise BasesFileError(f"{at}: the stored factors lose {recomputed:.4g} of the weights' energy, but "
                             f"{record.filter_energy_lost:.4g} was recorded when they were fitted: the file was changed")


def _rounded_from_fitted(layer: nn.Module, record: LayerRecord, recomputed: float) -> bool:
    """Whether ``layer``'s weights can be the fitted ones cast to a half-precision dtype: the
    factors lose of them what was recorded, up to that rounding."""
    if layer.weight.dtype not in HALF_CASTS:
        return False
    unit, lost = torch.finfo(layer.weight.dtype).eps / 2, record.filter_energy_lost
    return abs(recomputed - lost) <= 4 * unit * (math.sqrt(lost) + lost) + 2 * unit ** 2


def _weights_differ(at: str, layer: nn.Module, record: LayerRecord, recomputed: float) -> ReconError:
    """The error for a layer whose weight does not hash to the fitted one: a half-precision cast
    of the fitted weights is named as such."""
    if _rounded_from_fitted(layer, record, recomputed):
        dtype = str(layer.weight.dtype).removeprefix("torch.")
        return LayerError(f"{at}: the model is {dtype}, the bases were fitted on float32: apply to the float32 model, "
                          f"then call {HALF_CASTS[layer.weight.dtype]} (or pass allow_mismatch=True)")
    cast = f", beyond the rounding of a cast to {layer.weight.dtype}" if layer.weight.dtype in HALF_CASTS else ""
    return BasesFileError(f"{at}: the model's weights differ from those the bases were fitted to "
                          f"(weight_sha256 mismatch{cast}); {MISMATCH_HINT}")


def _example_for(model: nn.Module, example_input: Batch) -> Batch:
    """``example_input`` on the model's device and in its dtype, after one forward pass of the
    dense model shows that the model takes it."""
    parameter = next(model.parameters())
    example = moved(example_input, parameter.device, parameter.dtype)
    try:
        with torch.no_grad():
            run(model, example)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise ConfigError(f"apply_bases: the model failed on example_input of shape {describe(example)}: "
                          f"{err}") from err
    return example


def apply_bases(model: nn.Module, path: str | os.PathLike, allow_mismatch: bool = False,
                example_input: torch.Tensor | None = None, min_speedup: float = MIN_SPEEDUP,
                channels_last: bool = False) -> nn.Module:
    """Replace every layer named in the bases file by its low-rank module, in place.

    ``model`` is the eager ``nn.Module`` the bases were fitted to (script or trace it after);
    ``path`` a str or os.PathLike. Every layer is checked first (``check_layer_matches``;
    ``allow_mismatch`` skips the hashes and the recorded-error check, not the check for damaged
    factors), so a bad file changes nothing. The modules take each layer's device and dtype, but
    the hashes are of the weights fitted: a model cast to float16 or bfloat16 after the fit is
    refused (saying so), since its rounded weights cannot be checked against them; apply the
    bases to the float32 model, then cast it (or pass ``allow_mismatch``). With
    ``example_input`` (a floating-point batch, moved to the model's device and dtype) the
    never-slower guard runs: each low-rank module is timed against its dense layer on the real
    input shape and the dense layer stays unless the low-rank one is ``min_speedup`` times
    faster (timed in channels_last when ``channels_last``); decisions are logged to the
    ``recon`` logger. Arguments are checked before anything is read or timed. Returns ``model``.
    """
    check_model(model, "apply_bases: model")
    check_path(path, "apply_bases: path")
    if example_input is not None:
        example_input = check_example(example_input, "apply_bases: example_input")
    bases = read_bases(path)
    if not bases.layers:
        raise BasesFileError(f"{path} holds no layers: nothing to apply")
    folds = {r.name: r.folded_batchnorm for r in bases.layers.values() if r.folded_batchnorm is not None}
    folded = folded_layers(model, folds)
    replacements = {}
    for record in bases.layers.values():
        layer = check_layer_matches(model, record, allow_mismatch, folded.get(record.name))
        replacements[record.name] = record.module.to(device=layer.weight.device, dtype=layer.weight.dtype).eval()
    if example_input is not None:
        decisions = guard_replacements(model, replacements, _example_for(model, example_input), min_speedup,
                                       channels_last=channels_last)
        replacements = {d.layer: replacements[d.layer] for d in decisions if d.kept}
    for name, module in replacements.items():
        replace_layer(model, name, module)
        if name in folds:  # a layer the guard keeps dense keeps its BatchNorm too
            replace_layer(model, folds[name], nn.Identity())
    return model
