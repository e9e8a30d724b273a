"""recon: replace convolutions by low-rank separable filter banks (Jaderberg et al. 2014).

Compress a model from Python (``recon.compress``), save the bases, and in inference code::

    from recon import apply_bases
    model = apply_bases(model, "bases/fmnist-alexnet.h5")

Layout: ``recon.nn`` (the modules; torch only), ``recon.methods`` (one object per
decomposition and the registry), ``recon.pipeline`` (data, statistics, fitting, rank
policies, ``compress``), ``recon.io`` (bases files), ``recon.bench`` (timing, guard, MACs),
``recon.cli`` (the commands ``python -m recon.fit | evaluate | export | finetune``),
``recon.zoo`` (bundled models), ``recon.data`` (Fashion-MNIST), ``recon.metrics``.
The names below are imported on first use, so ``import recon.nn`` stays light.
"""
from __future__ import annotations

import importlib

from recon.version import __version__

_EXPORTS = {
    "compress": "recon.pipeline.compress", "Compression": "recon.pipeline.compress",
    "decompose": "recon.pipeline.fitting", "observe": "recon.pipeline.observe", "observing": "recon.pipeline.observe",
    "Observation": "recon.pipeline.observe", "Inputs": "recon.inputs",
    "calibrate": "recon.pipeline.calibrate",
    "AccuracyBudget": "recon.pipeline.policies", "Fixed": "recon.pipeline.policies",
    "TargetSpeedup": "recon.pipeline.target_speedup", "SolverOptions": "recon.methods",
    "apply_bases": "recon.surgery", "load_bases": "recon.surgery", "restore_dense": "recon.nn.replace",
    "save_bases": "recon.pipeline.save", "CompressConfig": "recon.pipeline.config", "Timing": "recon.bench.settings",
    "LowRankModule": "recon.nn", "LowRankExpConv": "recon.nn", "Scheme1Conv": "recon.nn", "Scheme2Conv": "recon.nn",
    **{name: "recon.errors" for name in ("ReconError", "ConfigError", "LayerError", "BasesFileError", "DataError",
                                         "FitError")},
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'recon' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
