"""The held-out fold of the statistics and the per-layer ridge chosen on it, against explicit
subsets of the samples and brute-force fits with each ridge."""
import numpy as np
import pytest
import torch
from torch import nn

import recon
from recon import observe
from recon.errors import ConfigError
from recon.io.bases_file import read_bases
from recon.methods import RIDGE_GRID
from recon.pipeline.batches import Batches
from recon.pipeline.fitting import output_variance_lost, refit_biases, to_numpy
from recon.pipeline.observe import HELD_OUT_EVERY, observe_asymmetric


def images(count: int, batch: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    grey = torch.randn(count, 1, 9, 9, generator=generator)  # nearly duplicated channels: ridge matters
    return list((grey.expand(-1, 3, -1, -1) + 0.05 * torch.randn(count, 3, 9, 9, generator=generator))
                .double().split(batch))


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3)).double()


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_the_held_out_fold_is_every_fifth_sample_whatever_the_batches(batch):
    data = images(23, batch)
    moments = observe(model(), data, ["2"], patches_per_image=None, progress=False)["2"]
    samples = torch.cat(data)
    held = torch.arange(len(samples)) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
    alone = observe(model(), [samples[held]], ["2"], patches_per_image=None, progress=False)["2"]
    rest = observe(model(), [samples[~held]], ["2"], patches_per_image=None, progress=False)["2"]
    whole = observe(model(), [samples], ["2"], patches_per_image=None, progress=False)["2"]
    for field in ("mean", "second_hat"):
        np.testing.assert_allclose(getattr(moments.held_out, field), getattr(alone, field), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(getattr(moments.without_held_out(), field), getattr(rest, field), rtol=1e-9,
                                   atol=1e-12)
        np.testing.assert_allclose(getattr(moments, field), getattr(whole, field), rtol=1e-9, atol=1e-12)
    assert (moments.held_out.count, moments.without_held_out().count) == (alone.count, rest.count)


def test_asymmetric_moments_split_the_same_way():
    dense, approx = model(), model()
    with torch.no_grad():
        approx[0].weight.mul_(0.9)
    data = images(12, 5)
    split = observe_asymmetric(dense, approx, Batches(data, None, torch.device("cpu"), torch.float64), "2", None,
                               progress=False)
    samples = torch.cat(data)
    held = torch.arange(len(samples)) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
    alone = observe_asymmetric(dense, approx, Batches([samples[held]], None, torch.device("cpu"), torch.float64),
                               "2", None, progress=False)
    for field in ("mean", "mean_hat", "second_hat", "output_cross", "output_energy"):
        np.testing.assert_allclose(getattr(split.held_out, field), getattr(alone, field), rtol=1e-9, atol=1e-12)
    assert split.without_held_out().count == split.count - alone.count


@pytest.mark.slow
def test_each_layer_gets_the_ridge_whose_fit_loses_least_on_the_held_out_samples():
    net, data = model(), images(40, 8)
    result = recon.compress(net, data, layers=["0", "2"], ranks=3, solver=recon.SolverOptions(ridge=RIDGE_GRID),
                            progress=False)
    moments = observe(net, data, ["0", "2"], progress=False)
    for name in ("0", "2"):
        layer, stats = net.get_submodule(name), moments[name]
        weights, bias = to_numpy(layer.weight), to_numpy(layer.bias)
        brute = []
        for ridge in RIDGE_GRID:  # one decompose per ridge on the samples not held out
            module = recon.decompose(layer, 3, moments=stats.without_held_out(),
                                     solver=recon.SolverOptions(ridge=ridge))
            w_hat = to_numpy(module.dense_weight())
            bias_hat = refit_biases(weights, bias, w_hat, stats.without_held_out(), 1)
            brute.append(output_variance_lost(weights, bias, w_hat, bias_hat, stats.held_out, 1))
        record = result.layers[name]
        table = record.history["ridge_held_out_loss"]
        np.testing.assert_allclose(table[:, 0], RIDGE_GRID)
        np.testing.assert_allclose(table[:, 1], brute, rtol=1e-3, atol=1e-6)
        best = RIDGE_GRID[int(np.argmin(brute))]
        alone = recon.decompose(layer, 3, moments=stats, solver=recon.SolverOptions(ridge=best))
        torch.testing.assert_close(record.module.dense_weight(), alone.dense_weight(), rtol=1e-4, atol=1e-6)


def test_the_ridge_table_survives_a_bases_file(tmp_path):
    net, data = model().float(), [batch.float() for batch in images(20, 10)]
    result = recon.compress(net, data, layers=["2"], ranks=3, solver=recon.SolverOptions(ridge=RIDGE_GRID),
                            progress=False)
    result.save(tmp_path / "b.h5")
    loaded = read_bases(tmp_path / "b.h5")
    np.testing.assert_allclose(loaded.layers["2"].history["ridge_held_out_loss"],
                               result.layers["2"].history["ridge_held_out_loss"])
    restored = recon.apply_bases(model().float(), tmp_path / "b.h5")
    torch.testing.assert_close(restored(data[0]), result.model(data[0]))


def test_too_few_samples_for_a_held_out_fold_fall_back_to_the_first_ridge_with_a_warning():
    net, data = model(), images(3, 3)
    with pytest.warns(UserWarning, match="no held-out samples"):
        result = recon.compress(net, data, layers=["2"], ranks=3, solver=recon.SolverOptions(ridge=RIDGE_GRID),
                                progress=False)
    fixed = recon.compress(net, data, layers=["2"], ranks=3, solver=recon.SolverOptions(ridge=RIDGE_GRID[0]),
                           progress=False)
    torch.testing.assert_close(result.layers["2"].module.dense_weight(), fixed.layers["2"].module.dense_weight())
    assert "ridge_held_out_loss" not in result.layers["2"].history


@pytest.mark.parametrize("ridge", [(), (1e-3, -1.0), (float("nan"),), ("a",)])
def test_a_bad_ridge_grid_is_refused(ridge):
    with pytest.raises(ConfigError, match="ridge must be"):
        recon.SolverOptions(ridge=ridge)
