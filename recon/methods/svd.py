"""Truncated SVD of an ``nn.Linear`` as two linear maps: Eckart-Young optimal for the weights,
and in data mode the exact reduced-rank regression of its outputs (a linear layer is a 1x1
convolution: Scheme 2's solver with kh = kw = 1)."""
from __future__ import annotations

import numpy as np
from torch import nn

from recon.methods.base import Fitted, Method, SolverOptions, overridden_forward
from recon.nn import LinearGeometry, LowRankLinear
from solvers import scheme2
from solvers.objectives import Moments, data_objective


class SVD(Method):
    name = "svd"
    summary = "truncated SVD of nn.Linear layers as two linear maps; filter or data mode"
    module_class = LowRankLinear
    fits_data = True
    exact_rank_errors = True

    def eligible(self, layer: nn.Module) -> str | None:
        if not isinstance(layer, nn.Linear):
            return f"it is a {type(layer).__name__} layer, not an nn.Linear"
        return overridden_forward(layer, nn.Linear)

    def max_rank(self, geometry: LinearGeometry) -> int:
        return min(geometry.in_features, geometry.out_features)

    def rank_hint(self, geometry: LinearGeometry) -> str:
        return f"R <= min(in_features, out_features) = {self.max_rank(geometry)}"

    def fit(self, weights: np.ndarray, rank: int, moments: Moments | None, options: SolverOptions,
            groups: int = 1) -> Fitted:
        as_conv = weights[:, :, None, None]
        quad = None if moments is None else data_objective(as_conv, moments, options.ridge)
        result = scheme2.fit(as_conv.astype(np.float32), rank, quad)
        return Fitted({"first": result.vertical[:, :, 0], "second": result.horizontal[:, :, 0]}, rank, {})

    def rank_errors(self, weights: np.ndarray, covariance: np.ndarray | None, groups: int = 1) -> np.ndarray:
        """A linear layer is a 1x1 convolution: Scheme 2's closed form with kh = kw = 1."""
        as_conv = weights[:, :, None, None]
        return scheme2.truncation_data_errors(as_conv, np.eye(weights.shape[1]) if covariance is None else covariance)
