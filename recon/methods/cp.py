"""CP decomposition of a conv (Lebedev et al. 2015), fitted to the weights by tensorly's ALS."""
from __future__ import annotations

from typing import Any

import numpy as np

from recon.errors import FitError
from recon.checks import check_whole
from recon.methods.base import SEED_BITS, Fitted, Method, SolverOptions
from recon.nn import ConvGeometry, CPConv
from solvers.objectives import Moments


def cp_factors(weights: np.ndarray, rank: int, iterations: int, seed: int) -> dict[str, np.ndarray]:
    """Rank-R CP factors of conv weights (N, C, kh, kw): out (N, R), in (C, R), rows (kh, R),
    columns (kw, R); SVD start, line search. FitError when the fit fails."""
    import tensorly
    from tensorly.decomposition import parafac

    tensorly.set_backend("numpy")
    cp, errors = parafac(weights, rank, n_iter_max=iterations, init="svd", random_state=seed,
                         return_errors=True, linesearch=True)
    factors = [f * (cp.weights if i == 0 else 1.0) for i, f in enumerate(cp.factors)]
    if not all(np.all(np.isfinite(f)) for f in factors) or not np.isfinite(errors[-1]) or errors[-1] >= 1:
        raise FitError(f"CP decomposition of rank {rank} failed (final relative error {errors[-1]:.3g})")
    return dict(zip(("out", "in", "rows", "columns"), factors))


class CP(Method):
    name = "cp"
    summary = "CP (Lebedev et al. 2015): pointwise, depthwise vertical, depthwise horizontal, pointwise; filter mode"
    module_class = CPConv

    def __init__(self, iterations: int = 200, seed: int = 0) -> None:
        check_whole("iterations", iterations, 1, bits=63)
        check_whole("seed", seed, 0, bits=SEED_BITS)
        self.iterations, self.seed = int(iterations), int(seed)

    def settings(self) -> dict[str, Any]:
        """``iterations`` of ALS and the ``seed`` of its initialisation."""
        return {"iterations": self.iterations, "seed": self.seed}

    def max_rank(self, geometry: ConvGeometry) -> int:
        """A rank that reproduces any weight tensor: the product of all dimensions but the largest."""
        dims = sorted(geometry.weight_shape)
        return dims[0] * dims[1] * dims[2]

    def rank_hint(self, geometry: ConvGeometry) -> str:
        return "the product of all weight dimensions but the largest"

    def fit(self, weights: np.ndarray, rank: int, moments: Moments | None, options: SolverOptions,
            groups: int = 1) -> Fitted:
        f = cp_factors(weights, rank, self.iterations, self.seed)
        return Fitted(self.module_factors(f), rank, {})

    def quick_fit(self, weights: np.ndarray, rank: int, groups: int = 1) -> Fitted:
        """One ALS sweep from the SVD start."""
        return Fitted(self.module_factors(cp_factors(weights, rank, 1, 0)), rank, {})

    @staticmethod
    def module_factors(f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """CPConv's parameters from factor matrices out (N, R), in (C, R), rows (kh, R), columns (kw, R)."""
        return {"first": f["in"].T, "vertical": f["rows"].T, "horizontal": f["columns"].T, "last": f["out"]}
