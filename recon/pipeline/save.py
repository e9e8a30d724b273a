"""``recon.save_bases``: any model holding low-rank modules (from ``compress``, ``apply_bases``,
``decompose``; calibrated, fine-tuned or edited since) written as a bases file of the dense
model it was made from, so that ``apply_bases`` on that dense model gives it back."""
from __future__ import annotations

import copy
import os
from pathlib import Path

from torch import nn

from recon import methods
from recon.errors import ConfigError
from recon.folding import batchnorm_pairs, fold_batchnorms
from recon.io.bases_file import BasesFile, update_bases, write_bases
from recon.io.hashing import layer_sha256, model_sha256
from recon.model_checks import check_made_from, check_model
from recon.nn import LowRankModule
from recon.record import LayerRecord, filter_energy_lost


def write_records(path: str | os.PathLike, model_name: str, model_hash: str, records: list[LayerRecord],
                  merge: bool = True, overwrite: bool = False) -> Path:
    """``records`` into a bases file, atomically: with ``merge`` added to the layers already in the
    file (of the same model), else replacing it; a file that is not a bases file of this model
    is refused unless ``overwrite``."""
    if merge and not overwrite:
        update_bases(path, model_name, model_hash, records)
        return Path(path)
    return write_bases(path, BasesFile(model_name, model_hash, {r.name: r for r in records}), overwrite)


def _folded(model: nn.Module, dense: nn.Module, names: list[str]) -> dict[str, str]:
    """conv name -> BatchNorm name for the pairs of ``dense`` whose BatchNorm is an Identity in ``model``."""
    convs = [name for name in names if isinstance(dense.get_submodule(name), nn.Conv2d)]
    modules = dict(model.named_modules())
    return {conv: norm for conv, norm in batchnorm_pairs(dense, convs).folds.items()
            if isinstance(modules.get(norm), nn.Identity)}


def _record(name: str, module: LowRankModule, layer: nn.Module, folded: str | None) -> LayerRecord:
    """The record of ``module``, which replaces ``layer`` (its weight error measured now)."""
    by_class = {method.module_class: method for method in methods.REGISTRY.values()}
    method = by_class.get(type(module))
    if method is None:
        raise ConfigError(f"layer {name!r} is a {type(module).__name__}, which no registered method makes")
    if method.geometry(layer) != module.geometry:
        raise ConfigError(f"layer {name!r}: the dense model's {method.geometry(layer)} is not the low-rank module's "
                          f"{module.geometry}: is dense the model it was made from?")
    weight_hash, bias_hash = layer_sha256(layer)
    return LayerRecord(name=name, method=method.name, rank=module.rank, mode="finetuned", geometry=module.geometry,
                       module=module, weight_sha256=weight_hash, bias_sha256=bias_hash,
                       filter_energy_lost=filter_energy_lost(layer, module), folded_batchnorm=folded)


def low_rank_records(model: nn.Module, dense: nn.Module) -> list[LayerRecord]:
    """A record of every low-rank module of ``model`` against its layer of ``dense`` (with the
    BatchNorm folded in where ``model`` has an Identity in its place), mode ``finetuned``."""
    check_model(model)
    check_model(dense, "dense")
    names = [name for name, module in model.named_modules() if isinstance(module, LowRankModule)]
    if not names:
        raise ConfigError("the model holds no low-rank module: nothing to save")
    check_made_from(dense, names)
    folds = _folded(model, dense, names)
    reference = fold_batchnorms(copy.deepcopy(dense), folds) if folds else dense
    return [_record(name, model.get_submodule(name), reference.get_submodule(name), folds.get(name)) for name in names]


def save_bases(model: nn.Module, path: str | os.PathLike, dense: nn.Module, *, model_name: str | None = None,
               merge: bool = True, overwrite: bool = False) -> Path:
    """Write every low-rank module of ``model`` to a bases file of ``dense`` (the model it was
    made from, unchanged: its hashes tie the file to it), so that ``apply_bases(dense, path)``
    reproduces ``model``'s low-rank layers. ``merge`` and ``overwrite`` as for
    ``Compression.save``; ``model_name`` defaults to ``dense``'s class name."""
    records = low_rank_records(model, dense)
    return write_records(path, model_name or type(dense).__name__, model_sha256(dense), records, merge, overwrite)
