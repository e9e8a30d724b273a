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

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recon.modules import ConvGeometry, _parameter
from solvers.vbmf import evbmf_rank

if TYPE_CHECKING:
    from recon.store import PeerLayer


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


def cp_factors(weights: np.ndarray, rank: int, iterations: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """CP factors of conv weights (N, C, kh, kw) with ``rank`` components (tensorly ALS, SVD start)."""
    import tensorly
    from tensorly.decomposition import parafac

    if rank < 1:
        raise ValueError(f"CP rank must be >= 1, got {rank}")
    tensorly.set_backend("numpy")
    cp, errors = parafac(weights, rank, n_iter_max=iterations, init="svd", random_state=seed,
                         return_errors=True, linesearch=True)
    factors = [f * (cp.weights if i == 0 else 1.0) for i, f in enumerate(cp.factors)]
    if not all(np.all(np.isfinite(f)) for f in factors) or not np.isfinite(errors[-1]) or errors[-1] >= 1:
        raise DecompositionError(f"CP decomposition of rank {rank} failed (final relative error {errors[-1]:.3g})")
    return dict(zip(("out_factor", "in_factor", "row_factor", "col_factor"), factors))


def cp_conv(conv: nn.Conv2d, rank: int, iterations: int = 200, seed: int = 0) -> CPConv:
    """CP decomposition of ``conv`` as a module."""
    geometry, weights, bias = _conv_weights(conv)
    f = cp_factors(weights, rank, iterations, seed)
    return CPConv(geometry, f["out_factor"], f["in_factor"], f["row_factor"], f["col_factor"], bias).to(conv.weight.device)


def tucker2_ranks(weights: np.ndarray) -> tuple[int, int]:
    """(R_out, R_in) chosen by EVBMF on the mode-0 and mode-1 unfoldings."""
    n, c = weights.shape[:2]
    return (evbmf_rank(weights.reshape(n, -1)), evbmf_rank(np.moveaxis(weights, 1, 0).reshape(c, -1)))


def tucker2_factors(weights: np.ndarray, ranks: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Tucker-2 core and factors of conv weights with (R_out, R_in) ranks, EVBMF-chosen when None."""
    from tensorly.decomposition import partial_tucker

    r_out, r_in = ranks if ranks is not None else tucker2_ranks(weights)
    n, c = weights.shape[:2]
    if not (1 <= r_out <= n and 1 <= r_in <= c):
        raise ValueError(f"Tucker-2 ranks must satisfy 1 <= R_out <= {n}, 1 <= R_in <= {c}; got ({r_out}, {r_in})")
    (core, (out_factor, in_factor)), _ = partial_tucker(weights, rank=[r_out, r_in], modes=[0, 1], init="svd")
    return {"core": core, "out_factor": out_factor, "in_factor": in_factor}


def tucker2_conv(conv: nn.Conv2d, ranks: tuple[int, int] | None = None) -> Tucker2Conv:
    """Tucker-2 decomposition of ``conv`` as a module."""
    geometry, weights, bias = _conv_weights(conv)
    f = tucker2_factors(weights, ranks)
    return Tucker2Conv(geometry, f["core"], f["out_factor"], f["in_factor"], bias).to(conv.weight.device)


def peer_macs(method: str, factors: dict[str, np.ndarray], geometry: ConvGeometry | None,
              input_size: tuple[int, int] | None) -> int:
    """Multiply-adds per image of a peer decomposition (input_size unused for svd)."""
    if method == "svd":
        return int(factors["first"].size + factors["second"].size)
    height, width = input_size
    left, right, top, bottom = geometry.side_padding()
    out_h, out_w = geometry.output_size(height, width)
    n, c = geometry.out_channels, geometry.in_channels
    kh, kw = geometry.kernel_size
    if method == "cp":
        rank = factors["in_factor"].shape[1]
        padded_w = width + left + right
        return (c * rank * (height + top + bottom) * padded_w + rank * kh * out_h * padded_w
                + rank * kw * out_h * out_w + rank * n * out_h * out_w)
    r_out, r_in = factors["core"].shape[:2]
    return c * r_in * height * width + r_in * r_out * kh * kw * out_h * out_w + r_out * n * out_h * out_w


def peer_layer(layer: nn.Module, name: str, method: str, rank: int | tuple[int, int] | None,
               input_size: tuple[int, int] | None = None, cp_iterations: int = 200) -> "PeerLayer":
    """Fit peer ``method`` (cp, tucker2, svd) to ``layer`` and describe it as a storable record."""
    from recon.store import PeerLayer, weight_sha256

    bias = None if layer.bias is None else layer.bias.detach().cpu().numpy().astype(np.float32)
    weights = layer.weight.detach().cpu().double().numpy()
    if method == "svd":
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"layer {name!r} is a {type(layer).__name__}; method 'svd' is for nn.Linear")
        first, second = svd_factors(layer, int(rank))
        record = PeerLayer(name, "svd", {"first": first, "second": second}, bias, weight_sha256(layer.weight),
                           features=(layer.in_features, layer.out_features))
        w_hat = second @ first
        dense = weights.size
    else:
        geometry = ConvGeometry.of(layer)
        factors = cp_factors(weights, int(rank), cp_iterations) if method == "cp" else tucker2_factors(weights, rank)
        record = PeerLayer(name, method, factors, bias, weight_sha256(layer.weight), geometry=geometry)
        w_hat = record.to_module().dense_weight().detach().double().numpy()
        dense = geometry.dense_macs(*input_size)
    record.filter_rel_error = float(np.sum((weights - w_hat) ** 2) / np.sum(weights ** 2))
    record.theoretical_speedup = dense / peer_macs(method, record.factors, record.geometry, input_size)
    return record


class LowRankLinear(nn.Sequential):
    """A linear layer as two: in -> R (no bias), R -> out (with the original bias)."""


def low_rank_linear(first: np.ndarray, second: np.ndarray, bias: np.ndarray | None) -> LowRankLinear:
    """Two linear layers computing x -> second @ (first @ x) + bias."""
    rank, in_features = first.shape
    layer_in = nn.Linear(in_features, rank, bias=False)
    layer_out = nn.Linear(rank, second.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer_in.weight.copy_(torch.as_tensor(np.asarray(first, np.float32)))
        layer_out.weight.copy_(torch.as_tensor(np.asarray(second, np.float32)))
        if bias is not None:
            layer_out.bias.copy_(torch.as_tensor(np.asarray(bias, np.float32)))
    return LowRankLinear(layer_in, layer_out)


def svd_factors(linear: nn.Linear, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(first (R, in), second (out, R)) of the rank-R truncated SVD of ``linear.weight``."""
    out_features, in_features = linear.weight.shape
    if not 1 <= rank <= min(out_features, in_features):
        raise ValueError(f"SVD rank must be in 1..{min(out_features, in_features)}, got {rank}")
    u, s, vt = np.linalg.svd(linear.weight.detach().cpu().double().numpy(), full_matrices=False)
    return vt[:rank] * np.sqrt(s[:rank, None]), u[:, :rank] * np.sqrt(s[:rank])


def svd_linear(linear: nn.Linear, rank: int) -> LowRankLinear:
    """Rank-``rank`` truncated SVD of an ``nn.Linear`` (optimal in Frobenius norm)."""
    bias = None if linear.bias is None else linear.bias.detach().cpu().numpy()
    return low_rank_linear(*svd_factors(linear, rank), bias)
