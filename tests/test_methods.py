"""Every registered method against independent truth: planted structure, Eckart-Young, the
dense layer; and the protocol's answers (ranks, estimates, refusals)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import recon
from recon import methods
from recon.errors import ConfigError, FitError
from recon.methods import SolverOptions
from recon.nn import ConvGeometry, LinearGeometry
from recon.pipeline.fitting import approximation_error, fit_layer
from solvers.vbmf import evbmf_rank, noise_variance
from tests.helpers import decaying_weights

pytest.importorskip("tensorly")


def planted(rows: int, cols: int, rank: int, seed: int) -> np.ndarray:
    """A random rank-``rank`` matrix plus Gaussian noise of variance 0.0025."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, cols)) + 0.05 * rng.standard_normal((rows, cols))


@settings(max_examples=10, deadline=None)
@given(shape=st.integers(1, 8).flatmap(lambda rank: st.tuples(st.just(rank), st.integers(max(20, 8 * rank), 64))),
       extra=st.integers(0, 200), seed=st.integers(0, 99))
def test_evbmf_recovers_planted_rank_and_noise(shape, extra, seed):
    # the noise estimate is unbiased to ~15% while the rank is at most an eighth of the smaller side
    rank, rows = shape
    noisy = planted(rows, rows + extra, rank, seed)
    assert evbmf_rank(noisy) == rank
    s = np.linalg.svd(noisy, compute_uv=False)
    assert noise_variance(s, noisy.shape, float(np.sum(noisy ** 2))) == pytest.approx(0.0025, rel=0.25)


def test_evbmf_noise_is_the_global_minimum_of_the_free_energy():
    # 20x20 of rank 8: a local minimum at "everything is noise" (sigma^2 1000x too large) trapped
    # a plain bounded search; EVBMF's own bias at such ranks stays below 2.5x
    noisy = planted(20, 20, 8, seed=22)
    s = np.linalg.svd(noisy, compute_uv=False)
    assert noise_variance(s, noisy.shape, float(np.sum(noisy ** 2))) < 2.5 * 0.0025
    assert evbmf_rank(noisy) == 8


def test_tucker2_evbmf_ranks_find_planted_structure():
    rng = np.random.default_rng(0)
    core = rng.standard_normal((5, 3, 3, 3))
    u_out, _ = np.linalg.qr(rng.standard_normal((40, 5)))
    u_in, _ = np.linalg.qr(rng.standard_normal((30, 3)))
    conv = nn.Conv2d(30, 40, 3, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.as_tensor(np.einsum("oiyx,no,ci->ncyx", core, u_out, u_in)
                                          + 0.002 * rng.standard_normal((40, 30, 3, 3))))
    assert recon.decompose(conv, "evbmf", "tucker2").rank == (5, 3)


def test_cp_matches_its_own_dense_weight_and_approximates_conv():
    conv = nn.Conv2d(6, 8, 3, padding=1, stride=(2, 1))
    module = recon.decompose(conv, 40, "cp")
    x = torch.randn(2, 6, 9, 9)
    dense = nn.functional.conv2d(x, module.dense_weight(), conv.bias, conv.stride, conv.padding)
    torch.testing.assert_close(module(x), dense, atol=1e-5, rtol=1e-4)
    error = float(((module.dense_weight() - conv.weight) ** 2).sum() / (conv.weight ** 2).sum())
    assert error < 0.2


def test_cp_of_planted_rank_is_exact():
    rng = np.random.default_rng(1)
    factors = [rng.standard_normal((d, 3)) for d in (8, 5, 3, 3)]
    conv = nn.Conv2d(5, 8, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.as_tensor(np.einsum("nr,cr,yr,xr->ncyx", *factors)))
    module = recon.decompose(conv, 3, methods.CP(iterations=500))
    x = torch.randn(1, 5, 7, 7)
    torch.testing.assert_close(module(x), conv(x), atol=1e-3, rtol=1e-3)


def test_cp_that_cannot_fit_is_a_fit_error(monkeypatch):
    monkeypatch.setattr("tensorly.decomposition.parafac",
                        lambda *args, **kwargs: (type("CP", (), {"weights": 1.0, "factors": [np.full((4, 2), np.nan)] * 4}),
                                                 [float("nan")]))
    with pytest.raises(FitError, match="layer 'Conv2d' \\(cp, rank 2\\).*failed"):
        recon.decompose(nn.Conv2d(4, 4, 3), 2, "cp")


def test_svd_truncation_is_eckart_young():
    linear = nn.Linear(20, 12)
    low = recon.decompose(linear, 5, "svd")
    s = torch.linalg.svdvals(linear.weight.detach())
    lost = float(((low.dense_weight() - linear.weight) ** 2).sum())
    assert lost == pytest.approx(float((s[5:] ** 2).sum()), rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["scheme2", "svd"])
def test_closed_form_rank_errors_equal_the_fitted_errors(name):
    method = methods.get(name)
    layer = nn.Conv2d(5, 7, (3, 2)) if name == "scheme2" else nn.Linear(9, 6)
    weights = layer.weight.detach().double().numpy()
    errors = method.rank_errors(weights, None)
    assert len(errors) == method.max_rank(method.geometry(layer))
    for rank in range(1, len(errors) + 1):
        record = fit_layer(method, layer, "layer", rank, None, SolverOptions())
        assert errors[rank - 1] == pytest.approx(record.filter_energy_lost, rel=1e-3, abs=1e-6)


@pytest.mark.slow
def test_estimates_bound_the_iterative_methods_from_the_right_side():
    conv = nn.Conv2d(8, 6, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.as_tensor(decaying_weights((6, 8, 3, 3), decay=0.8)))
    weights = conv.weight.detach().double().numpy()
    scheme1, tucker2 = methods.get("scheme1"), methods.get("tucker2")
    lower = scheme1.rank_errors(weights, None)
    upper = tucker2.rank_errors(weights, None)
    for rank in (1, 2, 4):
        assert fit_layer(scheme1, conv, "c", rank, None, SolverOptions()).filter_energy_lost >= lower[rank - 1] - 1e-6
        assert fit_layer(tucker2, conv, "c", rank, None, SolverOptions()).filter_energy_lost <= upper[rank - 1] + 1e-6


def test_ranks_are_checked_with_their_range():
    geometry = ConvGeometry(6, 6, (3, 3))
    with pytest.raises(ConfigError, match="scheme2 needs a rank in 1..18 .*min\\(C\\*kh, N\\*kw\\)"):
        methods.get("scheme2").check_rank(geometry, 19)
    with pytest.raises(ConfigError, match="scheme1 needs a rank in 1..9"):
        methods.get("scheme1").check_rank(geometry, 0)
    with pytest.raises(ConfigError, match="1 <= R_out <= 6"):
        methods.get("tucker2").check_rank(geometry, (7, 2))
    with pytest.raises(ConfigError, match="svd needs a rank in 1..4"):
        methods.get("svd").check_rank(LinearGeometry(4, 9), "evbmf")
    methods.get("tucker2").check_rank(geometry, "evbmf")
    with pytest.raises(ConfigError, match="unknown method 'tt'; available: scheme2, scheme1, cp, tucker2, svd"):
        methods.get("tt")


@pytest.mark.parametrize("name, factor", [("scheme2", 1), ("scheme2", 4), ("scheme1", 2), ("cp", 3), ("tucker2", 2)])
def test_rank_for_speedup_is_where_macs_cross_the_goal(name, factor):
    geometry = ConvGeometry(64, 64, (3, 3), padding=(1, 1))
    method = methods.get(name)
    rank = method.rank_for_speedup(geometry, (64, 28, 28), factor)
    goal = geometry.dense_macs((28, 28)) / factor
    assert method.macs(geometry, rank, (28, 28)) <= goal < method.macs(geometry, rank + 1, (28, 28))


grouped_convs = st.fixed_dictionaries({
    "groups": st.integers(1, 4), "per_group_in": st.integers(1, 3), "multiplier": st.integers(1, 3),
    "kernel": st.sampled_from([(1, 1), (3, 3), (5, 5), (7, 7), (3, 1), (1, 5)]),
    "stride": st.tuples(st.integers(1, 2), st.integers(1, 2)), "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)),
    "padding": st.one_of(st.tuples(st.integers(0, 3), st.integers(0, 3)), st.just("same")), "bias": st.booleans(),
})


def grouped_conv(g):
    stride = (1, 1) if g["padding"] == "same" else g["stride"]
    return nn.Conv2d(g["groups"] * g["per_group_in"], g["groups"] * g["multiplier"], g["kernel"], stride=stride,
                     padding=g["padding"], dilation=g["dilation"], groups=g["groups"], bias=g["bias"])


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(g=grouped_convs)
def test_grouped_depthwise_and_pointwise_convs_are_exact_at_full_rank(g):
    """Scheme 2 per group: grouped (G > 1), depthwise (one input channel per group) and 1x1 convs."""
    conv = grouped_conv(g)
    method = methods.get("scheme2")
    assert method.eligible(conv) is None
    module = recon.decompose(conv, method.max_rank(method.geometry(conv)))
    x = torch.randn(2, conv.in_channels, 15, 16)
    torch.testing.assert_close(module(x), conv(x), atol=2e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("kwargs, rank", [(dict(groups=4), 2), (dict(groups=8), 1), (dict(groups=1, kernel_size=1), 3)])
def test_grouped_depthwise_and_pointwise_data_fits_beat_filter_fits_on_outputs(kwargs, rank):
    kernel = kwargs.pop("kernel_size", 5)
    conv = nn.Conv2d(8, 8, kernel, padding=kernel // 2, **kwargs)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), conv)
    batches = [torch.randn(16, 3, 12, 12, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    data = recon.compress(model, batches, layers="2", ranks=rank, patches_per_image=None, progress=False).layers["2"]
    weights = recon.compress(model, batches, layers="2", ranks=rank, mode="filter", progress=False).layers["2"]
    moments = recon.observe(model, batches, ["2"], patches_per_image=None, progress=False)["2"]
    # the filter fit's output error measured on the same statistics, with its bias refitted as data mode does
    from recon.pipeline.fitting import output_variance_lost, refit_biases

    w = conv.weight.detach().double().numpy()
    b = conv.bias.detach().double().numpy()
    w_hat = weights.module.dense_weight().detach().double().numpy()
    filter_lost = output_variance_lost(w, b, w_hat, refit_biases(w, b, w_hat, moments, conv.groups), moments,
                                       conv.groups)
    assert data.output_variance_lost <= filter_lost + 1e-6
    # and the recorded error is what the module does on the data
    with torch.no_grad():
        inputs = torch.cat([model[1](model[0](x)) for x in batches])
        target, got = conv(inputs), data.module(inputs)
    lost = float(((got - target) ** 2).sum() / ((target - target.mean((0, 2, 3), keepdim=True)) ** 2).sum())
    assert data.output_variance_lost == pytest.approx(lost, rel=1e-3, abs=1e-6)


def test_linear_data_fit_is_reduced_rank_regression_and_beats_the_svd():
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 6))
    batches = [torch.randn(64, 10, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    data = recon.compress(model, batches, layers="2", method="svd", ranks=2, progress=False).layers["2"]
    weights = recon.compress(model, batches, layers="2", method="svd", ranks=2, mode="filter", progress=False)
    with torch.no_grad():
        inputs = torch.cat([model[1](model[0](x)) for x in batches])
        target = model[2](inputs)
        lost = lambda module: float(((module(inputs) - target) ** 2).sum() / ((target - target.mean(0)) ** 2).sum())
        assert lost(data.module) == pytest.approx(data.output_variance_lost, rel=1e-3)
        assert lost(data.module) < lost(weights.layers["2"].module)
    full = recon.compress(model, batches, layers="2", method="svd", ranks=6, progress=False).layers["2"]
    assert full.output_variance_lost == pytest.approx(0.0, abs=1e-5)


@pytest.mark.slow
def test_layers_are_solved_as_batches_with_the_results_of_solving_them_alone():
    """scheme1 pads the input channels of layers with one N and kernel; scheme2 stacks layers (and
    groups) of one shape."""
    from recon.pipeline.fitting import fit_layers

    torch.manual_seed(0)
    cases = {"scheme1": {"a": nn.Conv2d(8, 16, 3), "b": nn.Conv2d(3, 16, 3), "c": nn.Conv2d(4, 8, 3)},
             "scheme2": {"a": nn.Conv2d(8, 8, 3, groups=2), "b": nn.Conv2d(8, 8, 3, groups=2)}}
    for name, layers in cases.items():
        method = methods.get(name)
        ranks = {layer: 3 for layer in layers}
        together = fit_layers(method, layers, ranks, {layer: None for layer in layers}, SolverOptions())
        for layer_name, layer in layers.items():
            alone = fit_layer(method, layer, layer_name, 3, None, SolverOptions())
            assert together[layer_name].filter_energy_lost == pytest.approx(alone.filter_energy_lost, abs=1e-3)


@pytest.mark.dataset
@pytest.mark.parametrize("name", [m.name for m in methods.REGISTRY.values() if m.exact_rank_errors])
def test_exact_rank_errors_are_the_errors_of_the_quick_fit_in_data_mode(name, model, conv2_moments):
    """What ``exact_rank_errors`` promises and method="auto" relies on: the closed form equals
    the output variance the quick-fit module loses on real statistics (conv2 of the bundled
    model; the Linear as the 1x1 convolution of conv2's flattened patches)."""
    method = methods.get(name)
    conv = model.conv2
    if name == "svd":
        layer = nn.Linear(conv.in_channels * 25, conv.out_channels)
        with torch.no_grad():
            layer.weight.copy_(conv.weight.reshape(conv.out_channels, -1))
            layer.bias.copy_(conv.bias)
    else:
        layer = conv
    weights = layer.weight.detach().double().numpy()
    bias = layer.bias.detach().double().numpy()
    errors = method.rank_errors(weights, conv2_moments.covariance())
    for rank in (1, 4, 16, 40):
        fitted = method.build(method.geometry(layer), method.quick_fit(weights, rank), None)
        w_hat = fitted.dense_weight().detach().double().numpy()
        assert errors[rank - 1] == pytest.approx(approximation_error(weights, bias, w_hat, conv2_moments, 1),
                                                 rel=1e-3, abs=1e-6)
