"""``LayerRecord``: one replaced layer, as the pipeline made it and as a bases file stores it;
``GuardDecision``: what the never-slower guard measured for it."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from recon.nn import Geometry, LowRankModule
from recon.nn.base import Rank
from solvers.conditioning import Conditioning


@dataclass(frozen=True)
class GuardDecision:
    """Measured times of one layer and whether its low-rank module is kept."""

    layer: str
    dense_ms: float
    low_rank_ms: float
    kept: bool

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.low_rank_ms

    def __str__(self) -> str:
        verdict = "low-rank kept" if self.kept else "dense kept (low-rank not faster)"
        return (f"guard {self.layer}: dense {self.dense_ms:.3f} ms, low-rank {self.low_rank_ms:.3f} ms, "
                f"{self.speedup:.2f}x -> {verdict}")


@dataclass
class LayerRecord:
    """The low-rank module of one layer and what is known about it.

    ``filter_energy_lost`` = ||W_hat - W||^2 / ||W||^2 (the fraction of the weights' energy
    not reconstructed); ``output_variance_lost`` = E||y_hat - y||^2 / E||y - E y||^2 on the
    fitting statistics (the fraction of the layer's output variance not reconstructed; NaN
    without statistics). Both are squared: their square roots are the relative norm errors.
    ``statistics`` says how well the input statistics determine the fit (data mode);
    ``dense_reason`` why the dense layer was kept instead (the guard, or too much output lost);
    ``folded_batchnorm`` the BatchNorm folded into the module (``recon.folding``), whose
    weights and hashes are then those of the folded convolution.
    """

    name: str
    method: str
    rank: Rank
    mode: str
    geometry: Geometry
    module: LowRankModule
    weight_sha256: str
    bias_sha256: str | None
    filter_energy_lost: float = math.nan
    output_variance_lost: float = math.nan
    input_shape: tuple[int, ...] | None = None
    dense_macs: int | None = None
    macs: int | None = None
    fit_seconds: float = math.nan
    guard: GuardDecision | None = None
    statistics: Conditioning | None = None
    dense_reason: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    history: dict[str, np.ndarray] = field(default_factory=dict)
    folded_batchnorm: str | None = None

    @property
    def kept(self) -> bool:
        """False when the dense layer was kept instead (see ``dense_reason``)."""
        return self.dense_reason is None

    @property
    def theoretical_speedup(self) -> float:
        """Dense MACs / low-rank MACs on the layer's input shape (NaN when unknown)."""
        return self.dense_macs / self.macs if self.dense_macs and self.macs else math.nan


def filter_energy_lost(layer: nn.Module, module: LowRankModule) -> float:
    """||W_hat - W||^2 / ||W||^2 of ``module`` against ``layer``'s weight (0 for two zero
    weights, infinite for factors that compose weight where the layer has none)."""
    weight = layer.weight.detach().double().cpu()
    lost = float(((module.dense_weight().detach().double().cpu() - weight) ** 2).sum())
    energy = float((weight ** 2).sum())
    return lost / energy if energy > 0 else (0.0 if lost == 0 else math.inf)


def error_changed(record: LayerRecord, recomputed: float) -> bool:
    """Whether the weight error ``recomputed`` from a record's factors is not the one recorded at
    fit time (beyond the rounding of float32 factors and of the file)."""
    return not abs(recomputed - record.filter_energy_lost) <= 1e-4 + 1e-3 * abs(record.filter_energy_lost)


def current_record(record: LayerRecord, original: nn.Module, module: LowRankModule) -> LayerRecord:
    """``record`` for ``module`` as it is now (trained, calibrated or edited after the fit): the
    weight error measured again against ``original``, the dense layer it replaces; a module
    that changed is marked fine-tuned, and the fit's output error no longer applies to it."""
    recomputed = filter_energy_lost(original, module)
    if not error_changed(record, recomputed) and module is record.module:
        return record
    return dataclasses.replace(record, module=module, mode="finetuned", filter_energy_lost=recomputed,
                               output_variance_lost=math.nan)


def retrained_records(dense: nn.Module, trained: nn.Module, records: dict[str, LayerRecord],
                      mode: str) -> list[LayerRecord]:
    """The records of ``trained``'s low-rank layers after calibration or fine-tuning (``mode``):
    they hold its modules, the weight error is measured again against ``dense``, and the
    output error of the fit no longer applies."""
    return [dataclasses.replace(record, module=trained.get_submodule(name), mode=mode,
                                filter_energy_lost=filter_energy_lost(dense.get_submodule(name),
                                                                      trained.get_submodule(name)),
                                output_variance_lost=math.nan)
            for name, record in records.items()]
