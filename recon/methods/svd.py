"""Truncated SVD of an ``nn.Linear``: W ~ U_R S_R V_R^T as two linear maps (Eckart-Young optimal
in the Frobenius norm)."""
from __future__ import annotations

import numpy as np
from torch import nn

from recon.methods.base import Fitted, Method, SolverOptions, overridden_forward
from recon.nn import LinearGeometry, LowRankLinear
from solvers import scheme2
from solvers.objectives import Moments


class SVD(Method):
    name = "svd"
    summary = "truncated SVD of nn.Linear layers as two linear maps; filter mode"
    module_class = LowRankLinear
    v1_rank_key = "first"

    def eligible(self, layer: nn.Module) -> str | None:
        if not isinstance(layer, nn.Linear):
            return f"it is a {type(layer).__name__} layer, not an nn.Linear"
        return overridden_forward(layer, nn.Linear)

    def max_rank(self, geometry: LinearGeometry) -> int:
        return min(geometry.in_features, geometry.out_features)

    def rank_hint(self, geometry: LinearGeometry) -> str:
        return f"R <= min(in_features, out_features) = {self.max_rank(geometry)}"

    def fit(self, weights: np.ndarray, rank: int, moments: Moments | None, options: SolverOptions) -> Fitted:
        u, s, vt = np.linalg.svd(weights, full_matrices=False)
        root = np.sqrt(s[:rank])
        return Fitted({"first": vt[:rank] * root[:, None], "second": u[:, :rank] * root}, rank, {})

    def rank_errors(self, weights: np.ndarray, covariance: np.ndarray | None) -> np.ndarray:
        """A linear layer is a 1x1 convolution: Scheme 2's closed form with kh = kw = 1."""
        as_conv = weights[:, :, None, None]
        return scheme2.truncation_data_errors(as_conv, np.eye(weights.shape[1]) if covariance is None else covariance)
