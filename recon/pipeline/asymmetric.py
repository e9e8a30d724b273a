"""Asymmetric statistics of many layers fitted front to back, in a few passes of the data.

Asymmetric fitting gives each layer the inputs of the model approximated so far (x_hat) beside
the dense model's (x). Run from the input for every layer, that is one pass of both models per
layer, quadratic in the depth (a 55-conv ResNet-56 with 4,660 images did not finish in 20
minutes). ``AsymmetricObserver`` carries both models' activations block by block instead
(``recon.pipeline.propagate``): a block's inputs are computed once, its layers' moments come
from running just that block up to each layer, and the approximated side moves on through the
block once its layers are replaced. The patch locations are the ones ``observe_asymmetric``
draws, so both give the same moments; a model that cannot be propagated (untraceable, several
inputs, a block called twice) falls back to it, with a warning.
"""
from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from recon.pipeline.batches import Batches
from recon.pipeline.blocks import find_blocks
from recon.pipeline.observe import AsymmetricSums, observe_asymmetric, stop_at
from recon.pipeline.propagate import Carried
from solvers.objectives import Moments


class AsymmetricObserver:
    """Asymmetric moments of ``layers`` of ``model`` against ``approx``, asked for in model
    order, each after the layers before it have been replaced in ``approx`` (in place)."""

    def __init__(self, model: nn.Module, approx: nn.Module, batches: Batches, layers: list[str],
                 patches_per_image: int | None = 32, seed: int = 0, progress: bool = True) -> None:
        self.model, self.approx, self.batches = model.eval(), approx.eval(), batches
        self.patches_per_image, self.seed, self.progress = patches_per_image, seed, progress
        self.block_of = {layer: block for block, inside in find_blocks(model, layers).items() for layer in inside}
        self.carried = Carried(model, approx, list(batches), list(dict.fromkeys(self.block_of.values())))

    def moments(self, layer: str) -> Moments:
        """The asymmetric moments of ``layer`` with ``approx`` as it is now."""
        block = self.block_of[layer]
        calls = self.carried.calls(block)
        if calls is not None:
            return self._within(block, layer, calls)
        return observe_asymmetric(self.model, self.approx, self.batches, layer, self.patches_per_image, self.seed,
                                  self.progress)

    def _within(self, block: str, layer: str, calls) -> Moments:
        """The moments of ``layer`` from its block's arguments in both models (``calls``)."""
        inner = "" if layer == block else layer[len(block) + 1:]
        dense_block, approx_block = self.model.get_submodule(block), self.approx.get_submodule(block)
        sums = AsymmetricSums(layer, self.model.get_submodule(layer), self.patches_per_image, self.seed)
        pairs = zip(calls["dense"], calls["approx"])
        with torch.no_grad():
            for (dense_args, dense_kwargs), (approx_args, approx_kwargs) in tqdm(
                    pairs, total=len(calls["dense"]), desc=f"statistics of {layer} (asymmetric)", unit="batch",
                    disable=not self.progress, leave=False):
                sums.add(stop_at(dense_block, inner, lambda: dense_block(*dense_args, **dense_kwargs)),
                         stop_at(approx_block, inner, lambda: approx_block(*approx_args, **approx_kwargs)))
        return sums.moments()
