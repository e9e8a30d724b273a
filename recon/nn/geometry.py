"""Shapes of the layers recon replaces: ``ConvGeometry`` (``nn.Conv2d``) and ``LinearGeometry``.

A layer's *input shape* is the shape of one sample's input, without the batch dimension:
(C, H, W) for a convolution (only H, W matter for its cost), (..., in_features) for a linear
layer (every leading entry multiplies its cost).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

Pair = tuple[int, int]


def as_pair(value: int | tuple[int, ...], name: str) -> Pair:
    """``value`` as a pair of ints; ValueError naming ``name`` otherwise."""
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
    groups: int = 1

    @classmethod
    def of(cls, conv: nn.Conv2d) -> "ConvGeometry":
        """The geometry of ``conv`` (whether a method can replace it is the method's question)."""
        padding = conv.padding if isinstance(conv.padding, str) else as_pair(conv.padding, "padding")
        return cls(conv.in_channels, conv.out_channels, as_pair(conv.kernel_size, "kernel_size"),
                   as_pair(conv.stride, "stride"), padding, as_pair(conv.dilation, "dilation"), conv.groups)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        """(N, C / groups, kh, kw), the shape of ``nn.Conv2d.weight``."""
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

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

    def dense_macs(self, input_shape: tuple[int, ...]) -> int:
        """Multiply-accumulates of the dense convolution for one sample of ``input_shape`` (.., H, W)."""
        out_h, out_w = self.output_size(*input_shape[-2:])
        return math.prod(self.weight_shape) * out_h * out_w


@dataclass(frozen=True)
class LinearGeometry:
    """Shape of an ``nn.Linear``."""

    in_features: int
    out_features: int

    @classmethod
    def of(cls, linear: nn.Linear) -> "LinearGeometry":
        return cls(linear.in_features, linear.out_features)

    @property
    def groups(self) -> int:
        return 1

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    def dense_macs(self, input_shape: tuple[int, ...]) -> int:
        """Multiply-accumulates for one sample of ``input_shape`` (..., in_features)."""
        return self.in_features * self.out_features * math.prod(input_shape[:-1])


Geometry = ConvGeometry | LinearGeometry


def geometry_of(layer: nn.Module) -> Geometry:
    """The geometry of an ``nn.Conv2d`` or ``nn.Linear``; TypeError for anything else."""
    if isinstance(layer, nn.Conv2d):
        return ConvGeometry.of(layer)
    if isinstance(layer, nn.Linear):
        return LinearGeometry.of(layer)
    raise TypeError(f"expected an nn.Conv2d or nn.Linear, got {type(layer).__name__}")
