"""Asymmetric statistics carried block by block: the same moments as one pass of both models per
layer, in a number of forward passes that does not grow with the depth."""
import logging

import numpy as np
import pytest
import torch
from torch import nn

import recon
from recon.pipeline.asymmetric import AsymmetricObserver
from recon.pipeline.batches import Batches
from recon.pipeline import propagate
from recon.pipeline.observe import observe_asymmetric
from recon.surgery import replace_layer
from recon.zoo.cifar import cifar_resnet


def _resnet(depth: int = 14) -> nn.Module:
    torch.manual_seed(0)
    model = cifar_resnet(depth)
    for module in model.modules():  # non-trivial running statistics: BatchNorm must act as it would when trained
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model


def _batches(count: int = 3, size: int = 4) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(size, 3, 16, 16, generator=generator) for _ in range(count)]


def _convs(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def _assert_same(got, expected) -> None:
    assert got.count == expected.count
    for field in ("mean", "mean_hat", "second_hat", "output_cross", "output_energy"):
        np.testing.assert_allclose(getattr(got, field), getattr(expected, field), rtol=1e-9, atol=1e-12)


def test_moments_equal_one_pass_of_both_models_per_layer_as_layers_are_replaced():
    dense = _resnet()
    approx = _resnet()
    batches = Batches(_batches())
    layers = _convs(dense)
    observer = AsymmetricObserver(dense, approx, batches, layers, patches_per_image=6, seed=2, progress=False)
    assert observer.carried.active
    for name in layers:
        expected = observe_asymmetric(dense, approx, batches, name, patches_per_image=6, seed=2, progress=False)
        _assert_same(observer.moments(name), expected)
        # replace the layer as compress does, so that later layers see approximated inputs
        replace_layer(approx, name, recon.decompose(dense.get_submodule(name), 2))
    assert not np.allclose(expected.mean, expected.mean_hat)  # the last layer really saw approximated inputs


@pytest.mark.slow
def test_the_stem_runs_once_per_batch_and_model_whatever_the_depth():
    for depth in (8, 14):
        dense, batches = _resnet(depth), _batches()
        calls = []
        # the stem's BatchNorm is never replaced; the hook is copied with the model
        dense.bn1.register_forward_hook(lambda module, args, output: calls.append(len(args[0])))
        result = recon.compress(dense, batches, ranks=2, layers=_convs(dense), mode="asymmetric", progress=False)
        assert len(result.kept) == len(_convs(dense))
        # one sample for the shapes, then each batch once through the dense and once through the approximated copy
        assert calls == [1] + [4] * len(batches) * 2, depth


class Untraceable(nn.Module):
    """A forward with data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 3)

    def forward(self, x):
        x = self.first(x)
        if x.sum() > -1e9:
            x = torch.relu(x)
        return self.second(x)


def test_an_untraceable_model_falls_back_to_full_passes_with_a_warning(caplog):
    torch.manual_seed(0)
    dense, approx = Untraceable(), Untraceable()
    batches = Batches(_batches(2))
    with caplog.at_level(logging.WARNING, logger="recon"):
        observer = AsymmetricObserver(dense, approx, batches, ["first", "second"], progress=False)
    assert not observer.carried.active
    assert "torch.fx cannot trace Untraceable" in caplog.text and "square of the depth" in caplog.text
    _assert_same(observer.moments("second"), observe_asymmetric(dense, approx, batches, "second", progress=False))


@pytest.mark.slow
def test_compress_results_do_not_depend_on_the_propagation(monkeypatch):
    dense, batches = _resnet(8), _batches()
    carried = recon.compress(dense, batches, ranks=3, mode="asymmetric", progress=False)

    def refuse(self, block):
        raise propagate.Untraceable("forced for the test")

    monkeypatch.setattr(propagate.Propagation, "calls", refuse)
    full = recon.compress(dense, batches, ranks=3, mode="asymmetric", progress=False)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(carried.model(x), full.model(x), rtol=1e-4, atol=1e-5)
    for name, record in carried.layers.items():
        assert record.output_variance_lost == pytest.approx(full.layers[name].output_variance_lost, rel=1e-6)
