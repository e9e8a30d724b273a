"""``LowRankModule``: what every replacement of a dense layer shares.

A replacement is built empty for a geometry and rank (``empty``; then ``load_state_dict``
fills it, which is how bases files are read) or from fitted factors (``from_factors``). Its
parameters are its whole state, named as in its ``state_dict``, so a fine-tuned module can be
saved back as it is. ``dense_weight`` gives the weight of the dense layer it computes,
``count_macs`` its cost without building it.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from recon.nn.geometry import ConvGeometry, Geometry, LinearGeometry

Rank = int | tuple[int, ...]


def _float32_tensor(value: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A float32 CPU copy of an array or tensor."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float32).clone()
    return torch.tensor(np.asarray(value, np.float32))


class LowRankModule(nn.Module):
    """Base of the low-rank replacements of ``nn.Conv2d`` and ``nn.Linear`` layers.

    Subclasses name their factors in ``factor_shapes`` (state_dict name -> shape for a
    geometry and rank), implement ``forward``, ``dense_weight`` and ``count_macs``.
    """

    geometry_type: ClassVar[type] = ConvGeometry

    def __init__(self, geometry: Geometry, rank: Rank, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not isinstance(geometry, self.geometry_type):
            raise TypeError(f"{type(self).__name__} needs a {self.geometry_type.__name__}, got {type(geometry).__name__}")
        self.geometry = geometry
        self.rank = rank
        for name, shape in self.factor_shapes(geometry, rank).items():
            self.register_parameter(name, nn.Parameter(torch.zeros(shape, device=device, dtype=dtype)))
        out = geometry.out_channels if isinstance(geometry, ConvGeometry) else geometry.out_features
        self.bias = nn.Parameter(torch.zeros(out, device=device, dtype=dtype)) if bias else None

    @classmethod
    def factor_shapes(cls, geometry: Geometry, rank: Rank) -> dict[str, tuple[int, ...]]:
        """The shape of each factor parameter, by state_dict name."""
        raise NotImplementedError

    @classmethod
    def count_macs(cls, geometry: Geometry, rank: Rank, input_shape: tuple[int, ...]) -> int:
        """Multiply-accumulates of the forward pass for one sample of ``input_shape``."""
        raise NotImplementedError

    @classmethod
    def from_factors(cls, geometry: Geometry, factors: dict[str, np.ndarray | torch.Tensor],
                     bias: np.ndarray | torch.Tensor | None = None, rank: Rank | None = None) -> "LowRankModule":
        """A float32 module holding ``factors`` (each reshaped to its parameter's shape).

        ``rank`` defaults to the leading dimension of the first factor.
        """
        arrays = {name: _float32_tensor(value) for name, value in factors.items()}
        if rank is None:
            rank = int(next(iter(arrays.values())).shape[0])
        module = cls(geometry, rank, bias=bias is not None)
        expected = cls.factor_shapes(geometry, rank)
        if set(arrays) != set(expected):
            raise ValueError(f"{cls.__name__} takes factors {sorted(expected)}, got {sorted(arrays)}")
        with torch.no_grad():
            for name, shape in expected.items():
                if arrays[name].numel() != int(np.prod(shape)):
                    raise ValueError(f"{cls.__name__} factor {name!r} must hold {shape} values, "
                                     f"got shape {tuple(arrays[name].shape)}")
                getattr(module, name).copy_(arrays[name].reshape(shape))
            if bias is not None:
                values = _float32_tensor(bias)
                if tuple(values.shape) != tuple(module.bias.shape):
                    raise ValueError(f"bias must have shape {tuple(module.bias.shape)}, got {tuple(values.shape)}")
                module.bias.copy_(values)
        return module

    def factors(self) -> dict[str, np.ndarray]:
        """The factor parameters as float64 NumPy arrays (bias excluded), by state_dict name."""
        return {name: getattr(self, name).detach().cpu().double().numpy()
                for name in self.factor_shapes(self.geometry, self.rank)}

    def macs(self, input_shape: tuple[int, ...]) -> int:
        """Multiply-accumulates for one sample of ``input_shape``."""
        return self.count_macs(self.geometry, self.rank, input_shape)

    def theoretical_speedup(self, input_shape: tuple[int, ...]) -> float:
        """Dense MACs / low-rank MACs for one sample of ``input_shape``."""
        return self.geometry.dense_macs(input_shape) / self.macs(input_shape)

    def dense_weight(self) -> torch.Tensor:
        """The weight of the dense layer this module computes."""
        raise NotImplementedError

    def balance_(self) -> None:
        """Rescale factors that multiply each other to equal sizes, in place, without changing
        what the module computes (gradient steps then move them alike); nothing by default."""

    def to_dense(self) -> nn.Module:
        """The equivalent ``nn.Conv2d`` or ``nn.Linear`` (weight ``dense_weight()``, same bias)."""
        g = self.geometry
        weight = self.dense_weight().detach()
        kwargs = dict(bias=self.bias is not None, device=weight.device, dtype=weight.dtype)
        if isinstance(g, LinearGeometry):
            dense = nn.Linear(g.in_features, g.out_features, **kwargs)
        else:
            dense = nn.Conv2d(g.in_channels, g.out_channels, g.kernel_size, g.stride, g.padding, g.dilation,
                              g.groups, **kwargs)
        with torch.no_grad():
            dense.weight.copy_(weight)
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense


class PaddedConv(LowRankModule):
    """A conv replacement whose factor convolutions share one zero padding.

    Symmetric padding is passed to the factor convolutions (``row_padding`` to the vertical,
    ``col_padding`` to the horizontal one); asymmetric padding ('same' with an even kernel)
    is applied once with ``F.pad`` (``pre_pad``) before them.
    """

    def __init__(self, geometry: ConvGeometry, rank: Rank, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(geometry, rank, bias, device, dtype)
        self.in_channels, self.out_channels = geometry.in_channels, geometry.out_channels
        self.kernel_size, self.stride, self.padding = geometry.kernel_size, geometry.stride, geometry.padding
        self.dilation, self.groups = geometry.dilation, geometry.groups
        left, right, top, bottom = geometry.side_padding()
        symmetric = left == right and top == bottom
        self.needs_pre_pad = not symmetric
        self.pre_pad = [left, right, top, bottom]
        self.row_padding = top if symmetric else 0
        self.col_padding = left if symmetric else 0

    @staticmethod
    def vertical_size(geometry: ConvGeometry, input_shape: tuple[int, ...]) -> tuple[int, int]:
        """Spatial size after a vertical (kh x 1) convolution with the geometry's row sampling."""
        height, width = input_shape[-2:]
        out_h, _ = geometry.output_size(height, width)
        left, right, top, bottom = geometry.side_padding()
        return out_h, width + (left + right if (left, top) != (right, bottom) else 0)

    def extra_repr(self) -> str:
        g = self.geometry
        return (f"{g.in_channels}, {g.out_channels}, kernel_size={g.kernel_size}, stride={g.stride}, "
                f"padding={g.padding!r}, dilation={g.dilation}, rank={self.rank}, bias={self.bias is not None}")
