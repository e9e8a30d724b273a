"""Streaming second-moment statistics of a conv layer's input patches.

Forward hooks capture the layer's input; ``F.unfold`` turns it into patches x of length
D = C*kh*kw in the (c, y, x) order of the flattened weight; E[x], E[x x^T] (and, for the
asymmetric objective, the same patches x_hat seen through an approximated model, with
E[x x_hat^T], E[x_hat x_hat^T]) are accumulated in float64. Memory is O(D^2), whatever
the number of images; optionally only a random subset of patch locations per image is used.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from recon.modules import ConvGeometry
from recon.surgery import get_conv
from solvers.objectives import Moments


def unfold_patches(inputs: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """Input patches (B, L, D) of a conv with ``geometry``, D in (c, y, x) order."""
    inputs = F.pad(inputs, list(geometry.side_padding()))
    columns = F.unfold(inputs, geometry.kernel_size, dilation=geometry.dilation, stride=geometry.stride)
    return columns.transpose(1, 2)


class _InputCapture:
    """Forward pre-hook that keeps the latest input of a module."""

    def __init__(self, module: nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module: nn.Module, args: tuple) -> None:
        self.value = args[0].detach()


class MomentAccumulator:
    """Running float64 sums of x, x x^T (and x_hat terms) over patches."""

    def __init__(self, dim: int) -> None:
        self.count = 0
        self.sum = np.zeros(dim)
        self.sum_hat = np.zeros(dim)
        self.second = np.zeros((dim, dim))
        self.cross = np.zeros((dim, dim))
        self.second_hat = np.zeros((dim, dim))

    def add(self, patches: torch.Tensor, patches_hat: torch.Tensor | None = None) -> None:
        """Add (P, D) patches and, for the asymmetric form, their approximated counterparts."""
        x = patches.double()
        self.count += x.shape[0]
        self.sum += x.sum(0).numpy()
        self.second += (x.T @ x).numpy()
        if patches_hat is not None:
            x_hat = patches_hat.double()
            self.sum_hat += x_hat.sum(0).numpy()
            self.cross += (x.T @ x_hat).numpy()
            self.second_hat += (x_hat.T @ x_hat).numpy()

    def moments(self, symmetric: bool) -> Moments:
        n = self.count
        if symmetric:
            return Moments.symmetric(n, self.sum / n, self.second / n)
        return Moments(n, self.sum / n, self.second / n, self.sum_hat / n, self.cross / n, self.second_hat / n)


def _sample_locations(patches: torch.Tensor, per_image: int | None, generator: torch.Generator) -> torch.Tensor:
    """Keep ``per_image`` random patch locations of each image (all when None): (B*k, D)."""
    batch, locations, dim = patches.shape
    if per_image is None or per_image >= locations:
        return patches.reshape(-1, dim)
    index = torch.rand(batch, locations, generator=generator).argsort(1)[:, :per_image]
    return torch.gather(patches, 1, index[..., None].expand(-1, -1, dim)).reshape(-1, dim)


@torch.inference_mode()
def gather_moments(model: nn.Module, layer: str, batches: Iterable, approx_model: nn.Module | None = None,
                   patches_per_image: int | None = None, seed: int = 0, progress: bool = True) -> Moments:
    """Moments of the input patches of ``layer`` over ``batches``.

    Args:
      model: the dense model; x are its layer inputs.
      layer: qualified name of the conv.
      batches: iterable of input tensors or (inputs, labels) tuples.
      approx_model: the model with upstream layers already replaced; gives x_hat for the
        asymmetric objective. None means x_hat = x (symmetric).
      patches_per_image: sample this many patch locations per image (None: all).
    """
    conv = get_conv(model, layer)
    geometry = ConvGeometry.of(conv)
    capture = _InputCapture(conv)
    capture_hat = _InputCapture(get_conv(approx_model, layer)) if approx_model is not None else None
    generator = torch.Generator().manual_seed(seed)
    accumulator: MomentAccumulator | None = None
    try:
        model.eval()
        if approx_model is not None:
            approx_model.eval()
        for batch in tqdm(batches, desc=f"statistics {layer}", unit="batch", disable=not progress):
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(inputs)
            patches = unfold_patches(capture.value, geometry)
            if capture_hat is not None:
                approx_model(inputs)
                patches = torch.cat([patches, unfold_patches(capture_hat.value, geometry)], dim=2)
            sampled = _sample_locations(patches, patches_per_image, generator)
            dim = sampled.shape[1] // (2 if capture_hat is not None else 1)
            accumulator = accumulator or MomentAccumulator(dim)
            accumulator.add(sampled[:, :dim], sampled[:, dim:] if capture_hat is not None else None)
    finally:
        capture.handle.remove()
        if capture_hat is not None:
            capture_hat.handle.remove()
    if accumulator is None:
        raise ValueError("no patches were seen: the data source yielded no batches")
    return accumulator.moments(symmetric=capture_hat is None)
