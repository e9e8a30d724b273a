"""How much each layer's error costs at the model's output, measured on real inputs.

A layer whose reconstruction loses a fraction e of its output variance changes the model's
output by about s * e of the output's variance, to first order; s, the layer's sensitivity,
differs by orders of magnitude between layers (an early layer's error passes through every
later one). It is measured by adding Gaussian noise of relative variance ``noise`` (per
output channel) to one layer's output at a time and comparing the model's outputs: one
forward pass per layer, no labels. Rank allocation weights each layer's closed-form error by it.
"""
from __future__ import annotations

import torch
from torch import nn

NOISE = 0.01  # relative output variance of the probing noise


def relative_change(changed: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """||changed - reference||^2 / ||reference - its batch mean||^2 (differentiable)."""
    centred = reference - reference.mean(dim=0, keepdim=True)
    return ((changed - reference) ** 2).sum() / (centred ** 2).sum().clamp_min(1e-12)


def channel_axis(output: torch.Tensor) -> int:
    """The channel axis of a layer's output: 1 for convolutions (N, C, H, W), the last for
    linear layers ((N, F) or (N, ..., F))."""
    return 1 if output.ndim == 4 else output.ndim - 1


@torch.inference_mode()
def output_sensitivities(model: nn.Module, layers: list[str], sample: torch.Tensor, noise: float = NOISE,
                         seed: int = 0) -> dict[str, float]:
    """Per layer: relative change of ``model``'s output variance per relative output variance
    of noise added to that layer's output, on the batch ``sample``."""
    reference = model(sample)
    generator = torch.Generator(device=sample.device).manual_seed(seed)
    sensitivities = {}
    for name in layers:
        def perturb(module, args, output):
            dims = [axis for axis in range(output.ndim) if axis != channel_axis(output)]
            scale = (noise * output.var(dim=dims, keepdim=True)).sqrt()
            return output + scale * torch.randn(output.shape, generator=generator, device=output.device,
                                                dtype=output.dtype)

        hook = model.get_submodule(name).register_forward_hook(perturb)
        try:
            sensitivities[name] = float(relative_change(model(sample).double(), reference.double())) / noise
        finally:
            hook.remove()
    return sensitivities
