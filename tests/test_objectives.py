"""The moment-form data loss against losses computed from explicit conv outputs."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from recon import observe
from solvers import scheme1, scheme2
from solvers.objectives import data_objective, data_relative_error, filter_objective, refit_bias


class OneConv(nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return self.conv(x)


def explicit_error(conv, w_hat, b_hat, inputs):
    y = conv(inputs)
    y_hat = F.conv2d(inputs, w_hat, b_hat, conv.stride, conv.padding, conv.dilation)
    per_location = ((y - y_hat) ** 2).sum(1)
    variance = y.transpose(0, 1).reshape(y.shape[1], -1).var(1, unbiased=False).sum()
    return float(per_location.mean() / variance)


@pytest.mark.slow
@settings(max_examples=12, deadline=None)
@given(c=st.integers(1, 4), n=st.integers(1, 5), k=st.integers(2, 4), stride=st.integers(1, 3),
       padding=st.integers(0, 2), dilation=st.integers(1, 2))
def test_moment_loss_equals_loss_from_explicit_outputs(c, n, k, stride, padding, dilation):
    conv = nn.Conv2d(c, n, k, stride=stride, padding=padding, dilation=dilation).double()
    inputs = torch.randn(6, c, 12, 12, dtype=torch.float64).abs() + 0.3
    moments = observe(OneConv(conv), [inputs], ["conv"], patches_per_image=None, progress=False)["conv"]
    weights = conv.weight.detach().numpy()
    bias = conv.bias.detach().numpy()
    rank = max(1, scheme2.max_rank(weights.shape) // 2)
    fit = scheme2.fit(weights.astype(np.float32), rank)
    w_hat = np.einsum("nkx,kcy->ncyx", fit.horizontal, fit.vertical).astype(np.float64)
    # the bias-refitted loss: moment form vs explicit outputs vs the solver's Quadratic
    b_hat = refit_bias(weights, bias, w_hat, moments)
    explicit = explicit_error(conv, torch.from_numpy(w_hat), torch.from_numpy(b_hat), inputs)
    assert data_relative_error(weights, bias, w_hat, b_hat, moments) == pytest.approx(explicit, rel=1e-5, abs=1e-9)
    quad = data_objective(weights, moments, dtype=np.float64)
    assert float(quad.loss(w_hat / float(quad.weight_scale))) == pytest.approx(explicit, rel=1e-3, abs=1e-6)
    # without refitting the bias (what filter mode keeps)
    explicit_raw = explicit_error(conv, torch.from_numpy(w_hat), conv.bias, inputs)
    assert data_relative_error(weights, bias, w_hat, bias, moments) == pytest.approx(explicit_raw, rel=1e-5, abs=1e-9)


@pytest.mark.slow
def test_real_statistics_data_mode_beats_filter_mode_scheme2(model, conv2_moments):
    weights = model.conv2.weight.detach().numpy()
    bias = model.conv2.bias.detach().numpy()
    quad = data_objective(weights, conv2_moments)
    errors = {}
    for mode, objective in (("filter", None), ("data", quad)):
        fit = scheme2.fit(weights, 8, objective)
        w_hat = np.einsum("nkx,kcy->ncyx", fit.horizontal, fit.vertical)
        b_hat = refit_bias(weights, bias, w_hat, conv2_moments)
        errors[mode] = data_relative_error(weights, bias, w_hat, b_hat, conv2_moments)
    assert errors["data"] < 0.8 * errors["filter"]


@pytest.mark.slow
def test_real_statistics_data_mode_beats_filter_mode_scheme1(model, conv2_moments):
    weights = model.conv2.weight.detach().numpy()
    bias = model.conv2.bias.detach().numpy()
    errors = {}
    for mode, quad in (("filter", filter_objective(weights)), ("data", data_objective(weights, conv2_moments))):
        fit = scheme1.fit(weights, quad, 3)
        w_hat = np.einsum("ncm,my,mx->ncyx", fit.coeffs[0], fit.vertical[0], fit.horizontal[0])
        b_hat = refit_bias(weights, bias, w_hat, conv2_moments)
        errors[mode] = data_relative_error(weights, bias, w_hat, b_hat, conv2_moments)
    assert errors["data"] < errors["filter"]
