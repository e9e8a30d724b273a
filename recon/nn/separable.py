"""Jaderberg et al. (2014) separable filter banks as drop-in replacements for ``nn.Conv2d``.

Scheme 1 (``Scheme1Conv``): every input channel is filtered by M vertical then M horizontal
1-D filters shared by all channels, and a 1x1 convolution mixes the C*M maps into N outputs:
a vertical conv with groups=C (the M shared filters repeated per channel), a depthwise
horizontal conv, a 1x1 conv. Measured on a 2-core CPU (benchmarks/RESULTS.md, forward
variants) this is as fast or up to 2.3x faster than folding the channels into the batch.
Scheme 2 (``Scheme2Conv``): a (kh x 1) conv from C to K channels, then a (1 x kw) conv from K
to N channels: two ordinary dense convolutions (grouped alike for grouped convolutions).

Stride, padding (ints, tuples, 'same', 'valid'), dilation and bias carry over: the vertical
conv takes the row part, the horizontal conv the column part, the bias sits on the last conv.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from recon.nn.base import PaddedConv
from recon.nn.geometry import ConvGeometry


class LowRankExpConv(PaddedConv):
    """Base of the two schemes; ``num_bases`` is the rank (M for Scheme 1, K for Scheme 2)."""

    scheme: int = 0

    @property
    def num_bases(self) -> int:
        return int(self.rank)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scheme={self.scheme}"


class Scheme1Conv(LowRankExpConv):
    """M shared separable bases (v_m h_m^T) and coefficients a[n, c, m].

    Factors: vertical (M, 1, kh, 1), horizontal (M, 1, 1, kw), coeffs (N, C*M, 1, 1) with
    channel c's M maps adjacent.
    """

    scheme = 1

    @classmethod
    def factor_shapes(cls, geometry: ConvGeometry, rank: int) -> dict[str, tuple[int, ...]]:
        (kh, kw), n, c = geometry.kernel_size, geometry.out_channels, geometry.in_channels
        return {"vertical": (rank, 1, kh, 1), "horizontal": (rank, 1, 1, kw), "coeffs": (n, c * rank, 1, 1)}

    @classmethod
    def count_macs(cls, geometry: ConvGeometry, rank: int, input_shape: tuple[int, ...]) -> int:
        (kh, kw), c, n = geometry.kernel_size, geometry.in_channels, geometry.out_channels
        vert_h, vert_w = cls.vertical_size(geometry, input_shape)
        out_h, out_w = geometry.output_size(*input_shape[-2:])
        return c * rank * kh * vert_h * vert_w + c * rank * kw * out_h * out_w + n * c * rank * out_h * out_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.needs_pre_pad:
            x = F.pad(x, self.pre_pad)
        channels, (stride_h, stride_w), (dilation_h, dilation_w) = self.in_channels, self.stride, self.dilation
        maps = F.conv2d(x, self.vertical.repeat(channels, 1, 1, 1), None, (stride_h, 1),
                        (self.row_padding, 0), (dilation_h, 1), channels)
        maps = F.conv2d(maps, self.horizontal.repeat(channels, 1, 1, 1), None, (1, stride_w),
                        (0, self.col_padding), (1, dilation_w), channels * self.num_bases)
        return F.conv2d(maps, self.coeffs, self.bias)

    def dense_weight(self) -> torch.Tensor:
        n, c, m = self.out_channels, self.in_channels, self.num_bases
        return torch.einsum("ncm,my,mx->ncyx", self.coeffs.reshape(n, c, m),
                            self.vertical[:, 0, :, 0], self.horizontal[:, 0, 0, :])


class Scheme2Conv(LowRankExpConv):
    """K vertical filters over all input channels, then N horizontal filters over K maps; in a
    grouped convolution (G groups) K per group, both convolutions grouped alike, so depthwise
    convolutions become sums of K separable filters; a 1x1 kernel gives a truncated SVD as
    two 1x1 convolutions.

    Factors: vertical (G*K, C/G, kh, 1), horizontal (N, K, 1, kw).
    """

    scheme = 2

    @classmethod
    def factor_shapes(cls, geometry: ConvGeometry, rank: int) -> dict[str, tuple[int, ...]]:
        (kh, kw), n, c, g = geometry.kernel_size, geometry.out_channels, geometry.in_channels, geometry.groups
        return {"vertical": (g * rank, c // g, kh, 1), "horizontal": (n, rank, 1, kw)}

    @classmethod
    def count_macs(cls, geometry: ConvGeometry, rank: int, input_shape: tuple[int, ...]) -> int:
        (kh, kw), c, n = geometry.kernel_size, geometry.in_channels, geometry.out_channels
        vert_h, vert_w = cls.vertical_size(geometry, input_shape)
        out_h, out_w = geometry.output_size(*input_shape[-2:])
        return rank * c * kh * vert_h * vert_w + n * rank * kw * out_h * out_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.needs_pre_pad:
            x = F.pad(x, self.pre_pad)
        (stride_h, stride_w), (dilation_h, dilation_w) = self.stride, self.dilation
        x = F.conv2d(x, self.vertical, None, (stride_h, 1), (self.row_padding, 0), (dilation_h, 1), self.groups)
        return F.conv2d(x, self.horizontal, self.bias, (1, stride_w), (0, self.col_padding), (1, dilation_w),
                        self.groups)

    def dense_weight(self) -> torch.Tensor:
        g, n, k = self.groups, self.out_channels, self.num_bases
        vertical = self.vertical[:, :, :, 0].reshape(g, k, -1, self.kernel_size[0])
        horizontal = self.horizontal[:, :, 0, :].reshape(g, n // g, k, self.kernel_size[1])
        return torch.einsum("gnkx,gkcy->gncyx", horizontal, vertical).reshape(n, -1, *self.kernel_size)
