"""Peer decompositions against the dense layers they replace, and EVBMF against planted ranks."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from recon.baselines import cp_conv, svd_linear, tucker2_conv, tucker2_ranks
from solvers.vbmf import evbmf_rank, noise_variance

pytest.importorskip("tensorly")


@settings(max_examples=10, deadline=None)
@given(rows=st.integers(20, 60), extra=st.integers(0, 200), rank=st.integers(1, 8), seed=st.integers(0, 99))
def test_evbmf_recovers_planted_rank_and_noise(rows, extra, rank, seed):
    rng = np.random.default_rng(seed)
    cols = rows + extra
    signal = rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, cols))
    noisy = signal + 0.05 * rng.standard_normal((rows, cols))
    assert evbmf_rank(noisy) == rank
    s = np.linalg.svd(noisy, compute_uv=False)
    assert noise_variance(s, noisy.shape, float(np.sum(noisy ** 2))) == pytest.approx(0.0025, rel=0.25)


@pytest.mark.parametrize("kwargs", [dict(padding=1), dict(stride=2, padding=(2, 1), dilation=(1, 2)), dict(padding="same")])
def test_tucker2_full_rank_reproduces_conv(kwargs):
    conv = nn.Conv2d(6, 8, 3, **kwargs)
    module = tucker2_conv(conv, (8, 6))
    x = torch.randn(2, 6, 11, 10)
    torch.testing.assert_close(module(x), conv(x), atol=1e-5, rtol=1e-4)


def test_tucker2_evbmf_ranks_find_planted_structure():
    rng = np.random.default_rng(0)
    core = rng.standard_normal((5, 3, 3, 3))
    u_out, _ = np.linalg.qr(rng.standard_normal((40, 5)))
    u_in, _ = np.linalg.qr(rng.standard_normal((30, 3)))
    weights = np.einsum("oiyx,no,ci->ncyx", core, u_out, u_in) + 0.002 * rng.standard_normal((40, 30, 3, 3))
    assert tucker2_ranks(weights) == (5, 3)


def test_cp_matches_its_own_dense_weight_and_approximates_conv():
    conv = nn.Conv2d(6, 8, 3, padding=1, stride=(2, 1))
    module = cp_conv(conv, 40)
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
    module = cp_conv(conv, 3, iterations=500)
    x = torch.randn(1, 5, 7, 7)
    torch.testing.assert_close(module(x), conv(x), atol=1e-3, rtol=1e-3)


def test_svd_linear_full_rank_is_exact_and_truncation_optimal():
    linear = nn.Linear(20, 12)
    x = torch.randn(4, 20)
    torch.testing.assert_close(svd_linear(linear, 12)(x), linear(x), atol=1e-5, rtol=1e-5)
    low = svd_linear(linear, 5)
    w_hat = low[1].weight @ low[0].weight
    s = torch.linalg.svdvals(linear.weight.detach())
    assert float(((w_hat - linear.weight) ** 2).sum()) == pytest.approx(float((s[5:] ** 2).sum()), rel=1e-4)
    with pytest.raises(ValueError, match="1..12"):
        svd_linear(linear, 13)
