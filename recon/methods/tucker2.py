"""Tucker-2 decomposition of a conv (Kim et al. 2016) by tensorly's partial Tucker (HOSVD
start), ranks given or chosen by EVBMF (``solvers.vbmf``)."""
from __future__ import annotations

from typing import Any

import numpy as np

from recon.errors import ConfigError
from recon.methods.base import Fitted, Method, SolverOptions
from recon.nn import ConvGeometry, Tucker2Conv
from solvers.objectives import Moments
from solvers.vbmf import evbmf_rank

EVBMF = "evbmf"


def tucker2_ranks(weights: np.ndarray) -> tuple[int, int]:
    """(R_out, R_in) chosen by EVBMF on the mode-0 and mode-1 unfoldings."""
    n, c = weights.shape[:2]
    return (evbmf_rank(weights.reshape(n, -1)), evbmf_rank(np.moveaxis(weights, 1, 0).reshape(c, -1)))


def _unfolding_tail(matrix: np.ndarray, size: int) -> np.ndarray:
    """Energy left out by keeping r = 1..size singular values of ``matrix`` (0 past its rank)."""
    energy = np.linalg.svd(matrix, compute_uv=False) ** 2
    tail = np.append(np.cumsum(energy[::-1])[::-1], 0.0)
    return np.array([tail[min(r, len(energy))] for r in range(1, size + 1)])


class Tucker2(Method):
    name = "tucker2"
    summary = "Tucker-2 (Kim et al. 2016): pointwise, core conv, pointwise; rank R, (R_out, R_in) or 'evbmf'; filter mode"
    module_class = Tucker2Conv

    def max_rank(self, geometry: ConvGeometry) -> int:
        return max(geometry.in_channels, geometry.out_channels)

    def rank_hint(self, geometry: ConvGeometry) -> str:
        return "R is capped at each channel count: (min(R, N), min(R, C))"

    @staticmethod
    def pair(out_channels: int, in_channels: int, rank: int | tuple[int, int]) -> tuple[int, int]:
        """(R_out, R_in) of an int rank (capped by the channel counts) or of a pair."""
        if isinstance(rank, tuple):
            return rank
        return min(rank, out_channels), min(rank, in_channels)

    def module_rank(self, geometry: ConvGeometry, rank: int | tuple[int, int]) -> tuple[int, int]:
        return self.pair(geometry.out_channels, geometry.in_channels, rank)

    def check_rank(self, geometry: ConvGeometry, rank: Any) -> None:
        if rank == EVBMF:
            return
        if isinstance(rank, tuple):
            n, c = geometry.out_channels, geometry.in_channels
            if len(rank) != 2 or not (1 <= rank[0] <= n and 1 <= rank[1] <= c):
                raise ConfigError(f"tucker2 ranks (R_out, R_in) must satisfy 1 <= R_out <= {n}, 1 <= R_in <= {c}; "
                                  f"got {rank!r}")
            return
        super().check_rank(geometry, rank)

    def macs(self, geometry: ConvGeometry, rank: int | tuple[int, int], input_shape: tuple[int, ...]) -> int:
        pair = self.pair(geometry.out_channels, geometry.in_channels, rank)
        return Tucker2Conv.count_macs(geometry, pair, input_shape)

    def fit(self, weights: np.ndarray, rank: Any, moments: Moments | None, options: SolverOptions,
            groups: int = 1) -> Fitted:
        from tensorly.decomposition import partial_tucker

        ranks = tucker2_ranks(weights) if rank == EVBMF else self.pair(*weights.shape[:2], rank)
        (core, (out_factor, in_factor)), _ = partial_tucker(weights, rank=list(ranks), modes=[0, 1], init="svd")
        return Fitted(self.module_factors(core, out_factor, in_factor), ranks, {})

    @staticmethod
    def module_factors(core: np.ndarray, out_factor: np.ndarray, in_factor: np.ndarray) -> dict[str, np.ndarray]:
        """Tucker2Conv's parameters from the core (R_out, R_in, kh, kw) and the factors
        out (N, R_out), in (C, R_in)."""
        return {"first": in_factor.T, "core": core, "last": out_factor}

    def rank_errors(self, weights: np.ndarray, covariance: np.ndarray | None, groups: int = 1) -> np.ndarray:
        """The truncated HOSVD bound: energy left out by the mode-0 plus the mode-1 unfolding
        at (min(R, N), min(R, C)), relative to the weights' energy (filter space, either mode)."""
        n, c = weights.shape[:2]
        size = max(n, c)
        out_tail = _unfolding_tail(weights.reshape(n, -1), size)
        in_tail = _unfolding_tail(np.moveaxis(weights, 1, 0).reshape(c, -1), size)
        return np.minimum((out_tail + in_tail) / np.sum(weights ** 2), 1.0)
