"""``LowRankExpConv``: drop-in replacements for ``nn.Conv2d`` built from separable bases.

Scheme 1 (``Scheme1Conv``): every input channel is filtered by M vertical then M horizontal
1-D filters shared by all channels, and a 1x1 convolution mixes the C*M maps into N outputs:
a vertical conv with groups=C (the M shared filters repeated per channel), a depthwise
horizontal conv, a 1x1 conv. Measured on a 2-core CPU (benchmarks/RESULTS.md, forward
variants) this is as fast or up to 2.3x faster than folding the channels into the batch.
Scheme 2 (``Scheme2Conv``): a (kh x 1) conv from C to K channels, then a (1 x kw) conv from K
to N channels: two ordinary dense convolutions.

Stride, padding (ints, tuples, 'same', 'valid'), dilation and bias carry over: the vertical
conv takes the row part, the horizontal conv the column part, the bias sits on the last conv.
Asymmetric 'same' padding (even kernels) is applied once with ``F.pad`` before the convs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Pair = tuple[int, int]


def _parameter(array: np.ndarray, shape: tuple[int, ...]) -> nn.Parameter:
    """A float32 parameter holding a copy of ``array`` reshaped to ``shape``."""
    return nn.Parameter(torch.tensor(np.asarray(array), dtype=torch.float32).reshape(shape))


def _pair(value: int | tuple[int, ...], name: str) -> Pair:
    pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


@dataclass(frozen=True)
class ConvGeometry:
    """Shape and sampling of a 2-D convolution, as ``nn.Conv2d`` takes them."""

    in_channels: int
    out_channels: int
    kernel_size: Pair
    stride: Pair = (1, 1)
    padding: Pair | str = (0, 0)
    dilation: Pair = (1, 1)

    @classmethod
    def of(cls, conv: nn.Conv2d) -> "ConvGeometry":
        """The geometry of ``conv``; refuses what the low-rank modules cannot reproduce."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"expected an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(
                f"grouped convolutions (groups={conv.groups}) are not supported: the separable "
                "bases would mix channels across groups; keep this layer dense")
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding_mode={conv.padding_mode!r} is not supported; only 'zeros'")
        padding = conv.padding if isinstance(conv.padding, str) else _pair(conv.padding, "padding")
        return cls(conv.in_channels, conv.out_channels, _pair(conv.kernel_size, "kernel_size"),
                   _pair(conv.stride, "stride"), padding, _pair(conv.dilation, "dilation"))

    def side_padding(self) -> tuple[int, int, int, int]:
        """Zero padding as (left, right, top, bottom), resolving 'same' and 'valid'."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            total_h = self.dilation[0] * (self.kernel_size[0] - 1)
            total_w = self.dilation[1] * (self.kernel_size[1] - 1)
            return (total_w // 2, total_w - total_w // 2, total_h // 2, total_h - total_h // 2)
        if isinstance(self.padding, str):
            raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {self.padding!r}")
        ph, pw = self.padding
        return (pw, pw, ph, ph)

    def output_size(self, height: int, width: int) -> Pair:
        """Spatial output size for an input of ``height`` x ``width``."""
        left, right, top, bottom = self.side_padding()
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        return ((height + top + bottom - dh * (kh - 1) - 1) // sh + 1,
                (width + left + right - dw * (kw - 1) - 1) // sw + 1)

    def dense_macs(self, height: int, width: int) -> int:
        """Multiply-accumulates of the dense convolution for one image."""
        out_h, out_w = self.output_size(height, width)
        kh, kw = self.kernel_size
        return self.out_channels * self.in_channels * kh * kw * out_h * out_w


class LowRankExpConv(nn.Module):
    """Base of the low-rank expansions of a convolution; build one with ``from_conv`` or
    ``from_bases``. Subclasses: ``Scheme1Conv``, ``Scheme2Conv``."""

    scheme: int = 0

    def __init__(self, geometry: ConvGeometry, num_bases: int) -> None:
        super().__init__()
        self.geometry = geometry
        self.in_channels = geometry.in_channels
        self.out_channels = geometry.out_channels
        self.kernel_size = geometry.kernel_size
        self.stride = geometry.stride
        self.padding = geometry.padding
        self.dilation = geometry.dilation
        self.num_bases = num_bases
        left, right, top, bottom = geometry.side_padding()
        symmetric = left == right and top == bottom
        self.needs_pre_pad = not symmetric
        self.pre_pad = [left, right, top, bottom]
        self.row_padding = top if symmetric else 0
        self.col_padding = left if symmetric else 0

    @staticmethod
    def from_bases(geometry: ConvGeometry, vertical: np.ndarray, horizontal: np.ndarray,
                   coeffs: np.ndarray | None = None, bias: np.ndarray | None = None) -> "LowRankExpConv":
        """A module from fitted factors: Scheme 1 when ``coeffs`` is given, else Scheme 2.

        Scheme 1: vertical (M, kh), horizontal (M, kw), coeffs (N, C, M).
        Scheme 2: vertical (K, C, kh), horizontal (N, K, kw).
        """
        if coeffs is not None:
            return Scheme1Conv(geometry, vertical, horizontal, coeffs, bias)
        return Scheme2Conv(geometry, vertical, horizontal, bias)

    @staticmethod
    def from_conv(conv: nn.Conv2d, scheme: int = 2, num_bases: int = 8) -> "LowRankExpConv":
        """Quick filter-reconstruction path: fit ``num_bases`` bases to ``conv``'s weights."""
        from solvers import scheme1, scheme2
        from solvers.objectives import filter_objective

        geometry = ConvGeometry.of(conv)
        weights = conv.weight.detach().cpu().double().numpy()
        bias = None if conv.bias is None else conv.bias.detach().cpu().numpy()
        if scheme == 1:
            fit = scheme1.fit(weights.astype(np.float32), filter_objective(weights), num_bases)
            module = Scheme1Conv(geometry, fit.vertical[0], fit.horizontal[0], fit.coeffs[0], bias)
        elif scheme == 2:
            fit = scheme2.fit(weights.astype(np.float32), num_bases)
            module = Scheme2Conv(geometry, fit.vertical, fit.horizontal, bias)
        else:
            raise ValueError(f"scheme must be 1 or 2, got {scheme!r}")
        return module.to(device=conv.weight.device, dtype=conv.weight.dtype)

    def _bias_parameter(self, bias: np.ndarray | None) -> None:
        if bias is not None and np.shape(bias) != (self.out_channels,):
            raise ValueError(f"bias must have shape ({self.out_channels},), got {np.shape(bias)}")
        self.bias = None if bias is None else _parameter(bias, (self.out_channels,))

    def dense_weight(self) -> torch.Tensor:
        """The (N, C, kh, kw) weight of the convolution this module computes."""
        raise NotImplementedError

    def to_dense(self) -> nn.Conv2d:
        """The equivalent ``nn.Conv2d`` (same geometry, weight ``dense_weight()``)."""
        g = self.geometry
        weight = self.dense_weight().detach()
        conv = nn.Conv2d(g.in_channels, g.out_channels, g.kernel_size, g.stride, g.padding, g.dilation,
                         bias=self.bias is not None, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(weight)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def macs(self, input_size: tuple[int, int]) -> int:
        """Multiply-accumulates of this module's forward pass for one (H, W) image."""
        raise NotImplementedError

    def theoretical_speedup(self, input_size: tuple[int, int]) -> float:
        """Dense MACs / low-rank MACs for one (H, W) image."""
        return self.geometry.dense_macs(*input_size) / self.macs(input_size)

    def _vertical_size(self, height: int, width: int) -> Pair:
        """Spatial size after the vertical (row) convolution."""
        out_h, _ = self.geometry.output_size(height, width)
        return out_h, width + (self.pre_pad[0] + self.pre_pad[1] if self.needs_pre_pad else 0)

    def extra_repr(self) -> str:
        g = self.geometry
        return (f"{g.in_channels}, {g.out_channels}, kernel_size={g.kernel_size}, stride={g.stride}, "
                f"padding={g.padding!r}, dilation={g.dilation}, scheme={self.scheme}, "
                f"num_bases={self.num_bases}, bias={self.bias is not None}")


class Scheme1Conv(LowRankExpConv):
    """M shared separable bases (v_m h_m^T) and coefficients a[n, c, m]."""

    scheme = 1

    def __init__(self, geometry: ConvGeometry, vertical: np.ndarray, horizontal: np.ndarray,
                 coeffs: np.ndarray, bias: np.ndarray | None = None) -> None:
        vertical, horizontal, coeffs = (np.asarray(x) for x in (vertical, horizontal, coeffs))
        num_bases = vertical.shape[0]
        (kh, kw), n, c = geometry.kernel_size, geometry.out_channels, geometry.in_channels
        expected = {"vertical": (num_bases, kh), "horizontal": (num_bases, kw), "coeffs": (n, c, num_bases)}
        for name, array in zip(expected, (vertical, horizontal, coeffs)):
            if array.shape != expected[name]:
                raise ValueError(f"Scheme 1 {name} must have shape {expected[name]}, got {array.shape}")
        super().__init__(geometry, num_bases)
        self.vertical = _parameter(vertical, (num_bases, 1, kh, 1))
        self.horizontal = _parameter(horizontal, (num_bases, 1, 1, kw))
        self.coeffs = _parameter(coeffs, (n, c * num_bases, 1, 1))
        self._bias_parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.needs_pre_pad:
            x = F.pad(x, self.pre_pad)
        channels = self.in_channels
        maps = F.conv2d(x, self.vertical.repeat(channels, 1, 1, 1), None, (self.stride[0], 1),
                        (self.row_padding, 0), (self.dilation[0], 1), channels)
        maps = F.conv2d(maps, self.horizontal.repeat(channels, 1, 1, 1), None, (1, self.stride[1]),
                        (0, self.col_padding), (1, self.dilation[1]), channels * self.num_bases)
        return F.conv2d(maps, self.coeffs, self.bias)

    def dense_weight(self) -> torch.Tensor:
        n, c, m = self.out_channels, self.in_channels, self.num_bases
        return torch.einsum("ncm,my,mx->ncyx", self.coeffs.reshape(n, c, m),
                            self.vertical[:, 0, :, 0], self.horizontal[:, 0, 0, :])

    def macs(self, input_size: tuple[int, int]) -> int:
        (kh, kw), m = self.kernel_size, self.num_bases
        c, n = self.in_channels, self.out_channels
        vert_h, vert_w = self._vertical_size(*input_size)
        out_h, out_w = self.geometry.output_size(*input_size)
        return c * m * kh * vert_h * vert_w + c * m * kw * out_h * out_w + n * c * m * out_h * out_w


class Scheme2Conv(LowRankExpConv):
    """K vertical filters over all input channels, then N horizontal filters over K maps."""

    scheme = 2

    def __init__(self, geometry: ConvGeometry, vertical: np.ndarray, horizontal: np.ndarray,
                 bias: np.ndarray | None = None) -> None:
        vertical, horizontal = np.asarray(vertical), np.asarray(horizontal)
        rank = vertical.shape[0]
        (kh, kw), n, c = geometry.kernel_size, geometry.out_channels, geometry.in_channels
        expected = {"vertical": (rank, c, kh), "horizontal": (n, rank, kw)}
        for name, array in zip(expected, (vertical, horizontal)):
            if array.shape != expected[name]:
                raise ValueError(f"Scheme 2 {name} must have shape {expected[name]}, got {array.shape}")
        super().__init__(geometry, rank)
        self.vertical = _parameter(vertical, (rank, c, kh, 1))
        self.horizontal = _parameter(horizontal, (n, rank, 1, kw))
        self._bias_parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.needs_pre_pad:
            x = F.pad(x, self.pre_pad)
        x = F.conv2d(x, self.vertical, None, (self.stride[0], 1), (self.row_padding, 0), (self.dilation[0], 1))
        return F.conv2d(x, self.horizontal, self.bias, (1, self.stride[1]), (0, self.col_padding),
                        (1, self.dilation[1]))

    def dense_weight(self) -> torch.Tensor:
        return torch.einsum("nkx,kcy->ncyx", self.horizontal[:, :, 0, :], self.vertical[:, :, :, 0])

    def macs(self, input_size: tuple[int, int]) -> int:
        (kh, kw), k = self.kernel_size, self.num_bases
        vert_h, vert_w = self._vertical_size(*input_size)
        out_h, out_w = self.geometry.output_size(*input_size)
        return k * self.in_channels * kh * vert_h * vert_w + self.out_channels * k * kw * out_h * out_w
