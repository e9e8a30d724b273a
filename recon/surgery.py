"""Put low-rank modules into a model by qualified layer name, after checking that each one
belongs where it goes."""
from __future__ import annotations

import logging
import os

import torch
from torch import nn

from recon import methods
from recon.bench.guard import MIN_SPEEDUP, guard_replacements
from recon.errors import BasesFileError, LayerError
from recon.folding import folded_layers
from recon.io.bases_file import read_bases
from recon.io.hashing import layer_sha256
from recon.nn import LowRankModule
from recon.nn.replace import replace_layer
from recon.record import LayerRecord, filter_energy_lost

LOG = logging.getLogger("recon")
IMPLAUSIBLE_ENERGY_LOST = 100.0  # factors whose weights are this far from the layer's (||W_hat - W|| > 10 ||W||) are damage
MISMATCH_HINT = "refit, or pass allow_mismatch=True (--allow-mismatch on the command line) if that is intended"


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
    if allow_mismatch:
        return layer
    weight_hash, bias_hash = layer_sha256(layer)
    if weight_hash != record.weight_sha256:
        raise BasesFileError(f"{at}: the model's weights differ from those the bases were fitted to "
                             f"(weight_sha256 mismatch); {MISMATCH_HINT}")
    if record.bias_sha256 is not None and bias_hash != record.bias_sha256:
        raise BasesFileError(f"{at}: the model's bias differs from the one the bases were fitted to "
                             f"(bias_sha256 mismatch); {MISMATCH_HINT}")
    if record.bias_sha256 is None and layer.bias is not None:
        LOG.warning("warning: %s: the bases file (schema v1) records no bias hash, so a bias changed since the fit "
                    "cannot be detected; re-save it with this recon to record one", at)
    if abs(recomputed - record.filter_energy_lost) > 1e-4 + 1e-3 * abs(record.filter_energy_lost):
        raise BasesFileError(f"{at}: the stored factors lose {recomputed:.4g} of the weights' energy, but "
                             f"{record.filter_energy_lost:.4g} was recorded when they were fitted: the file was changed")
    return layer


def apply_bases(model: nn.Module, path: str | os.PathLike, allow_mismatch: bool = False,
                example_input: torch.Tensor | None = None, min_speedup: float = MIN_SPEEDUP,
                channels_last: bool = False) -> nn.Module:
    """Replace every layer named in the bases file by its low-rank module, in place.

    Every layer is checked first (``check_layer_matches``; ``allow_mismatch`` skips the
    hashes and the recorded-error check, not the check for damaged factors), so a bad file
    changes nothing. With
    ``example_input`` the never-slower guard runs: each low-rank module is timed against its
    dense layer on the real input shape and the dense layer stays unless the low-rank one is
    ``min_speedup`` times faster (timed in channels_last when ``channels_last``); decisions
    are logged to the ``recon`` logger. Returns ``model``.
    """
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
        decisions = guard_replacements(model, replacements, example_input, min_speedup, channels_last=channels_last)
        replacements = {d.layer: replacements[d.layer] for d in decisions if d.kept}
    for name, module in replacements.items():
        replace_layer(model, name, module)
        if name in folds:  # a layer the guard keeps dense keeps its BatchNorm too
            replace_layer(model, folds[name], nn.Identity())
    return model

