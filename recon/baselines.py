"""Peer decompositions, for comparison with Jaderberg's schemes on the same model and data.

* CP (Lebedev et al. 2015): W[n,c,y,x] ~ sum_r A[n,r] B[c,r] Y[y,r] X[x,r]: pointwise C->R,
  depthwise vertical, depthwise horizontal, pointwise R->N. Fitted by tensorly's ALS; a fit
  that does not converge or produces non-finite factors raises ``DecompositionError``.
* Tucker-2 (Kim et al. 2016): W ~ core x_0 U_out x_1 U_in: pointwise C->R_in, core conv
  R_in->R_out (kh x kw), pointwise R_out->N; ranks from EVBMF on the unfoldings, or given.
* Truncated SVD for ``nn.Linear``: W ~ U_R S_R V_R^T as two linear layers.
All are filter reconstructions (they match weights, not data) and need the ``peers`` extra.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recon.modules import ConvGeometry, _parameter
from solvers.vbmf import evbmf_rank


class DecompositionError(RuntimeError):
    """A peer decomposition failed (diverged, non-finite, or worse than no approximation)."""


def _conv_weights(conv: nn.Conv2d) -> tuple[ConvGeometry, np.ndarray, np.ndarray | None]:
    geometry = ConvGeometry.of(conv)
    bias = None if conv.bias is None else conv.bias.detach().cpu().numpy()
    return geometry, conv.weight.detach().cpu().double().numpy(), bias


class CPConv(nn.Module):
    """Rank-R CP decomposition of a conv as four convolutions."""

    def __init__(self, geometry: ConvGeometry, out_factor, in_factor, row_factor, col_factor, bias) -> None:
        super().__init__()
        rank = in_factor.shape[1]
        (kh, kw), self.geometry = geometry.kernel_size, geometry
        self.rank = rank
        self.pre_pad = list(geometry.side_padding())
        self.first = _parameter(in_factor.T, (rank, geometry.in_channels, 1, 1))
        self.vertical = _parameter(row_factor.T, (rank, 1, kh, 1))
        self.horizontal = _parameter(col_factor.T, (rank, 1, 1, kw))
        self.last = _parameter(out_factor, (geometry.out_channels, rank, 1, 1))
        self.bias = None if bias is None else _parameter(bias, (geometry.out_channels,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.geometry
        x = F.conv2d(F.pad(x, self.pre_pad), self.first)
        x = F.conv2d(x, self.vertical, None, (g.stride[0], 1), 0, (g.dilation[0], 1), self.rank)
        x = F.conv2d(x, self.horizontal, None, (1, g.stride[1]), 0, (1, g.dilation[1]), self.rank)
        return F.conv2d(x, self.last, self.bias)

    def dense_weight(self) -> torch.Tensor:
        return torch.einsum("nr,rc,ry,rx->ncyx", self.last[:, :, 0, 0], self.first[:, :, 0, 0],
                            self.vertical[:, 0, :, 0], self.horizontal[:, 0, 0, :])


class Tucker2Conv(nn.Module):
    """Tucker-2 decomposition of a conv: pointwise, core conv, pointwise."""

    def __init__(self, geometry: ConvGeometry, core, out_factor, in_factor, bias) -> None:
        super().__init__()
        r_out, r_in, kh, kw = core.shape
        self.first = nn.Conv2d(geometry.in_channels, r_in, 1, bias=False)
        self.core = nn.Conv2d(r_in, r_out, (kh, kw), geometry.stride, geometry.padding, geometry.dilation, bias=False)
        self.last = nn.Conv2d(r_out, geometry.out_channels, 1, bias=bias is not None)
        with torch.no_grad():
            self.first.weight.copy_(torch.as_tensor(in_factor.T.copy()).reshape(r_in, -1, 1, 1))
            self.core.weight.copy_(torch.as_tensor(core.copy()))
            self.last.weight.copy_(torch.as_tensor(out_factor.copy()).reshape(-1, r_out, 1, 1))
            if bias is not None:
                self.last.bias.copy_(torch.as_tensor(bias.copy()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.core(self.first(x)))

    def dense_weight(self) -> torch.Tensor:
        return torch.einsum("no,oiyx,ic->ncyx", self.last.weight[:, :, 0, 0], self.core.weight, self.first.weight[:, :, 0, 0])


def cp_conv(conv: nn.Conv2d, rank: int, iterations: int = 200, seed: int = 0) -> CPConv:
    """CP decomposition of ``conv``'s weights with ``rank`` components (tensorly ALS, SVD start)."""
    import tensorly
    from tensorly.decomposition import parafac

    if rank < 1:
        raise ValueError(f"CP rank must be >= 1, got {rank}")
    geometry, weights, bias = _conv_weights(conv)
    tensorly.set_backend("numpy")
    cp, errors = parafac(weights, rank, n_iter_max=iterations, init="svd", random_state=seed,
                         return_errors=True, linesearch=True)
    factors = [f * (cp.weights if i == 0 else 1.0) for i, f in enumerate(cp.factors)]
    if not all(np.all(np.isfinite(f)) for f in factors) or not np.isfinite(errors[-1]) or errors[-1] >= 1:
        raise DecompositionError(f"CP decomposition of rank {rank} failed (final relative error {errors[-1]:.3g})")
    return CPConv(geometry, *factors, bias).to(conv.weight.device)


def tucker2_ranks(weights: np.ndarray) -> tuple[int, int]:
    """(R_out, R_in) chosen by EVBMF on the mode-0 and mode-1 unfoldings."""
    n, c = weights.shape[:2]
    return (evbmf_rank(weights.reshape(n, -1)), evbmf_rank(np.moveaxis(weights, 1, 0).reshape(c, -1)))


def tucker2_conv(conv: nn.Conv2d, ranks: tuple[int, int] | None = None) -> Tucker2Conv:
    """Tucker-2 decomposition of ``conv`` with (R_out, R_in) ranks, EVBMF-chosen when None."""
    from tensorly.decomposition import partial_tucker

    geometry, weights, bias = _conv_weights(conv)
    r_out, r_in = ranks if ranks is not None else tucker2_ranks(weights)
    n, c = weights.shape[:2]
    if not (1 <= r_out <= n and 1 <= r_in <= c):
        raise ValueError(f"Tucker-2 ranks must satisfy 1 <= R_out <= {n}, 1 <= R_in <= {c}; got ({r_out}, {r_in})")
    (core, (out_factor, in_factor)), _ = partial_tucker(weights, rank=[r_out, r_in], modes=[0, 1], init="svd")
    return Tucker2Conv(geometry, core, out_factor, in_factor, bias).to(conv.weight.device)


class LowRankLinear(nn.Sequential):
    """A linear layer as two: in -> R (no bias), R -> out (with the original bias)."""


def svd_linear(linear: nn.Linear, rank: int) -> LowRankLinear:
    """Rank-``rank`` truncated SVD of an ``nn.Linear`` (optimal in Frobenius norm)."""
    out_features, in_features = linear.weight.shape
    if not 1 <= rank <= min(out_features, in_features):
        raise ValueError(f"SVD rank must be in 1..{min(out_features, in_features)}, got {rank}")
    u, s, vt = torch.linalg.svd(linear.weight.detach().double(), full_matrices=False)
    first = nn.Linear(in_features, rank, bias=False)
    second = nn.Linear(rank, out_features, bias=linear.bias is not None)
    with torch.no_grad():
        first.weight.copy_((vt[:rank] * s[:rank, None].sqrt()).float())
        second.weight.copy_((u[:, :rank] * s[:rank].sqrt()).float())
        if linear.bias is not None:
            second.bias.copy_(linear.bias)
    return LowRankLinear(first, second)
