"""Other low-rank replacements, for comparison with Jaderberg's schemes on the same model.

* ``CPConv`` (Lebedev et al. 2015): W[n,c,y,x] ~ sum_r A[n,r] B[c,r] Y[y,r] X[x,r] as four
  convolutions: pointwise C->R, depthwise vertical, depthwise horizontal, pointwise R->N.
* ``Tucker2Conv`` (Kim et al. 2016): W ~ core x_0 U_out x_1 U_in as pointwise C->R_in, core
  conv R_in->R_out (kh x kw), pointwise R_out->N; the rank is the pair (R_out, R_in).
* ``LowRankLinear``: W ~ second @ first as two linear maps (truncated SVD of an ``nn.Linear``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from recon.nn.base import LowRankModule, PaddedConv
from recon.nn.geometry import ConvGeometry, LinearGeometry


class CPConv(PaddedConv):
    """Rank-R CP decomposition: first (R, C, 1, 1), vertical (R, 1, kh, 1), horizontal (R, 1, 1, kw),
    last (N, R, 1, 1). The input is padded before the first pointwise convolution."""

    @classmethod
    def factor_shapes(cls, geometry: ConvGeometry, rank: int) -> dict[str, tuple[int, ...]]:
        (kh, kw), n, c = geometry.kernel_size, geometry.out_channels, geometry.in_channels
        return {"first": (rank, c, 1, 1), "vertical": (rank, 1, kh, 1), "horizontal": (rank, 1, 1, kw),
                "last": (n, rank, 1, 1)}

    @classmethod
    def count_macs(cls, geometry: ConvGeometry, rank: int, input_shape: tuple[int, ...]) -> int:
        height, width = input_shape[-2:]
        left, right, top, bottom = geometry.side_padding()
        out_h, out_w = geometry.output_size(height, width)
        (kh, kw), n, c = geometry.kernel_size, geometry.out_channels, geometry.in_channels
        padded_w = width + left + right
        return (c * rank * (height + top + bottom) * padded_w + rank * kh * out_h * padded_w
                + rank * kw * out_h * out_w + rank * n * out_h * out_w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (stride_h, stride_w), (dilation_h, dilation_w) = self.stride, self.dilation
        x = F.conv2d(F.pad(x, self.pre_pad), self.first)
        x = F.conv2d(x, self.vertical, None, (stride_h, 1), 0, (dilation_h, 1), self.first.shape[0])
        x = F.conv2d(x, self.horizontal, None, (1, stride_w), 0, (1, dilation_w), self.first.shape[0])
        return F.conv2d(x, self.last, self.bias)

    def dense_weight(self) -> torch.Tensor:
        return torch.einsum("nr,rc,ry,rx->ncyx", self.last[:, :, 0, 0], self.first[:, :, 0, 0],
                            self.vertical[:, 0, :, 0], self.horizontal[:, 0, 0, :])

    @torch.no_grad()
    def balance_(self) -> None:
        """Give each rank-1 term's four factors the same norm (their geometric mean): ALS leaves
        them orders of magnitude apart, which made fine-tuning with one step size diverge."""
        views = [self.first[:, :, 0, 0], self.vertical[:, 0, :, 0], self.horizontal[:, 0, 0, :],
                 self.last[:, :, 0, 0].T]
        norms = torch.stack([view.norm(dim=1) for view in views]).clamp_min(1e-30)
        target = norms.log().mean(dim=0).exp()
        for view, norm in zip(views, norms):
            view.mul_((target / norm)[:, None])


class Tucker2Conv(PaddedConv):
    """Tucker-2 decomposition with rank (R_out, R_in): first (R_in, C, 1, 1), core
    (R_out, R_in, kh, kw), last (N, R_out, 1, 1)."""

    @classmethod
    def factor_shapes(cls, geometry: ConvGeometry, rank: tuple[int, int]) -> dict[str, tuple[int, ...]]:
        r_out, r_in = rank
        return {"first": (r_in, geometry.in_channels, 1, 1), "core": (r_out, r_in, *geometry.kernel_size),
                "last": (geometry.out_channels, r_out, 1, 1)}

    @classmethod
    def count_macs(cls, geometry: ConvGeometry, rank: tuple[int, int], input_shape: tuple[int, ...]) -> int:
        r_out, r_in = rank
        height, width = input_shape[-2:]
        out_h, out_w = geometry.output_size(height, width)
        (kh, kw), n, c = geometry.kernel_size, geometry.out_channels, geometry.in_channels
        return c * r_in * height * width + r_in * r_out * kh * kw * out_h * out_w + r_out * n * out_h * out_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.first)
        if self.needs_pre_pad:
            x = F.pad(x, self.pre_pad)
        x = F.conv2d(x, self.core, None, self.stride, (self.row_padding, self.col_padding), self.dilation)
        return F.conv2d(x, self.last, self.bias)

    def dense_weight(self) -> torch.Tensor:
        return torch.einsum("no,oiyx,ic->ncyx", self.last[:, :, 0, 0], self.core, self.first[:, :, 0, 0])


class LowRankLinear(LowRankModule):
    """A linear layer as two: first (R, in_features) without bias, then second (out_features, R)."""

    geometry_type = LinearGeometry

    @classmethod
    def factor_shapes(cls, geometry: LinearGeometry, rank: int) -> dict[str, tuple[int, ...]]:
        return {"first": (rank, geometry.in_features), "second": (geometry.out_features, rank)}

    @classmethod
    def count_macs(cls, geometry: LinearGeometry, rank: int, input_shape: tuple[int, ...]) -> int:
        rows = 1
        for size in input_shape[:-1]:
            rows *= size
        return rank * (geometry.in_features + geometry.out_features) * rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.first), self.second, self.bias)

    def dense_weight(self) -> torch.Tensor:
        return self.second @ self.first

    def extra_repr(self) -> str:
        g = self.geometry
        return f"in_features={g.in_features}, out_features={g.out_features}, rank={self.rank}, bias={self.bias is not None}"
