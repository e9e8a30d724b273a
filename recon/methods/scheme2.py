"""Scheme 2 of Jaderberg et al. (2014): K vertical (kh x 1) filters over all C input channels,
then N horizontal (1 x kw) filters over those K maps. Filter reconstruction is a truncated SVD
(closed form); data reconstruction starts there and runs L-BFGS (``solvers.scheme2``), or is
the exact reduced-rank regression for 1x1 kernels. A grouped convolution (depthwise
included) gets K per group, the G groups solved as one batch."""
from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from recon.checks import check_whole
from recon.methods.base import Fitted, Method, SolverOptions, conv_refusal
from recon.nn import ConvGeometry, Scheme2Conv
from solvers import scheme2
from solvers.objectives import Moments, data_objective, stack_quadratics


def split_groups(weights: np.ndarray, groups: int) -> np.ndarray:
    """Conv weights (N, C/G, kh, kw) as G independent problems (G, N/G, C/G, kh, kw)."""
    return weights.reshape(groups, weights.shape[0] // groups, *weights.shape[1:])


class Scheme2(Method):
    name = "scheme2"
    summary = ("Jaderberg Scheme 2: K vertical then N horizontal filters (two convs; grouped, depthwise and 1x1 "
               "convs too); filter or data mode")
    module_class = Scheme2Conv
    fits_data = True
    exact_rank_errors = True

    def __init__(self, lbfgs_iterations: int = scheme2.ITERATIONS) -> None:
        check_whole("lbfgs_iterations", lbfgs_iterations, 1, bits=63)
        self.lbfgs_iterations = int(lbfgs_iterations)

    def settings(self) -> dict[str, Any]:
        """``lbfgs_iterations``: L-BFGS iterations of the data-mode fit."""
        return {"lbfgs_iterations": self.lbfgs_iterations}

    def eligible(self, layer: nn.Module) -> str | None:
        return conv_refusal(layer, grouped=True, pointwise=True)

    def max_rank(self, geometry: ConvGeometry) -> int:
        g = geometry.groups
        return scheme2.max_rank((geometry.out_channels // g, geometry.in_channels // g, *geometry.kernel_size))

    def rank_hint(self, geometry: ConvGeometry) -> str:
        (kh, kw), g = geometry.kernel_size, geometry.groups
        per_group = " per group" if g > 1 else ""
        return (f"K{per_group} <= min(C*kh, N*kw){per_group} = min({geometry.in_channels // g * kh}, "
                f"{geometry.out_channels // g * kw})")

    def fit(self, weights: np.ndarray, rank: int, moments: Moments | None, options: SolverOptions,
            groups: int = 1) -> Fitted:
        return self.fit_many([(weights, moments)], rank, options, groups)[0]

    def fit_many(self, problems: list[tuple[np.ndarray, Moments | None]], rank: int, options: SolverOptions,
                 groups: int = 1) -> list[Fitted]:
        """Every group of every layer (all of one shape) as one batch of the solver."""
        weights = np.concatenate([split_groups(w, groups) for w, _ in problems])
        quads = None
        if problems[0][1] is not None:
            quads = stack_quadratics([data_objective(group, moments.group(g), options.ridge)
                                      for w, moments in problems for g, group in enumerate(split_groups(w, groups))])
        result = scheme2.fit_batch(weights.astype(np.float32), rank, quads, self.lbfgs_iterations)
        n, c, kh, kw = problems[0][0].shape
        vertical = result.vertical.reshape(len(problems), groups * rank, c, kh)
        horizontal = result.horizontal.reshape(len(problems), n, rank, kw)
        return [Fitted({"vertical": v, "horizontal": h}, rank, {}) for v, h in zip(vertical, horizontal)]

    def rank_errors(self, weights: np.ndarray, covariance: np.ndarray | None, groups: int = 1) -> np.ndarray:
        """Exact for the truncated SVD; a grouped layer's error sums its groups' errors."""
        lost, total = 0.0, 0.0
        for index, problem in enumerate(split_groups(weights, groups)):
            dim = int(np.prod(problem.shape[1:]))
            block = np.eye(dim) if covariance is None else (covariance if groups == 1 else covariance[index])
            flat = problem.reshape(problem.shape[0], -1)
            energy = float(np.sum((flat @ block) * flat))
            lost = lost + scheme2.truncation_data_errors(problem, block) * energy
            total += energy
        return lost / total
