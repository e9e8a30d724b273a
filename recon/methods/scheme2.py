"""Scheme 2 of Jaderberg et al. (2014): K vertical (kh x 1) filters over all C input channels,
then N horizontal (1 x kw) filters over those K maps. Filter reconstruction is a truncated SVD
(closed form); data reconstruction starts there and runs L-BFGS (``solvers.scheme2``)."""
from __future__ import annotations

import numpy as np
from torch import nn

from recon.methods.base import Fitted, Method, SolverOptions, conv_refusal
from recon.nn import ConvGeometry, Scheme2Conv
from solvers import scheme2
from solvers.objectives import Moments, data_objective


class Scheme2(Method):
    name = "scheme2"
    summary = "Jaderberg Scheme 2: K vertical then N horizontal filters (two convs); filter or data mode"
    module_class = Scheme2Conv
    fits_data = True

    def eligible(self, layer: nn.Module) -> str | None:
        return conv_refusal(layer)

    def max_rank(self, geometry: ConvGeometry) -> int:
        return scheme2.max_rank(geometry.weight_shape)

    def rank_hint(self, geometry: ConvGeometry) -> str:
        (kh, kw), c, n = geometry.kernel_size, geometry.in_channels, geometry.out_channels
        return f"K <= min(C*kh, N*kw) = min({c * kh}, {n * kw})"

    def fit(self, weights: np.ndarray, rank: int, moments: Moments | None, options: SolverOptions) -> Fitted:
        quad = None if moments is None else data_objective(weights, moments, options.ridge)
        result = scheme2.fit(weights.astype(np.float32), rank, quad, options.lbfgs_iterations)
        return Fitted({"vertical": result.vertical, "horizontal": result.horizontal}, rank, {})

    def rank_errors(self, weights: np.ndarray, covariance: np.ndarray | None) -> np.ndarray:
        if covariance is None:
            covariance = np.eye(int(np.prod(weights.shape[1:])))
        return scheme2.truncation_data_errors(weights, covariance)
