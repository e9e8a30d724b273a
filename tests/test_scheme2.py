import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from solvers import scheme2
from solvers.objectives import Moments, data_objective, filter_objective, stack_quadratics
from tests.helpers import decaying_weights


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 12), c=st.integers(1, 12), kh=st.integers(1, 5), kw=st.integers(2, 5), data=st.data())
def test_filter_fit_error_is_eckart_young(n, c, kh, kw, data):
    weights = np.random.default_rng(n * 100 + c).standard_normal((n, c, kh, kw)).astype(np.float32)
    rank = data.draw(st.integers(1, scheme2.max_rank(weights.shape)))
    result = scheme2.fit(weights, rank)
    sigma = np.linalg.svd(weights.transpose(1, 2, 0, 3).reshape(c * kh, n * kw).astype(np.float64), compute_uv=False)
    expected = (sigma[rank:] ** 2).sum() / (sigma ** 2).sum()
    w_hat = np.einsum("nkx,kcy->ncyx", result.horizontal, result.vertical)
    assert np.sum((weights - w_hat) ** 2) / np.sum(weights ** 2) == pytest.approx(expected, abs=2e-5)
    assert result.loss == pytest.approx(expected, abs=2e-5)


def test_full_rank_reproduces_weights():
    weights = decaying_weights((8, 6, 3, 3))
    result = scheme2.fit(weights, scheme2.max_rank(weights.shape))
    assert np.allclose(np.einsum("nkx,kcy->ncyx", result.horizontal, result.vertical), weights, atol=1e-5)


def _correlated_moments(dim, seed=0, samples=4000):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, dim)) @ rng.standard_normal((dim, dim)) * 0.3 + 0.2
    return Moments.symmetric(samples, x.mean(0), x.T @ x / samples)


def test_data_fit_beats_filter_fit_on_data_loss():
    weights = decaying_weights((16, 8, 3, 3), decay=0.85)
    quad = data_objective(weights, _correlated_moments(8 * 9))
    filt = scheme2.fit(weights, 6)
    dat = scheme2.fit(weights, 6, quad)
    w_filter = np.einsum("nkx,kcy->ncyx", filt.horizontal, filt.vertical)
    filter_loss = float(quad.loss(w_filter / quad.weight_scale))
    assert dat.loss < 0.8 * filter_loss


def test_identity_statistics_make_data_fit_a_filter_fit():
    weights = decaying_weights((10, 6, 3, 3))
    dim = 6 * 9
    quad = data_objective(weights, Moments.symmetric(1, np.zeros(dim), np.eye(dim)))
    dat = scheme2.fit(weights, 5, quad)
    assert dat.loss == pytest.approx(scheme2.fit(weights, 5).loss, abs=1e-4)


@pytest.mark.parametrize("rank", [0, -1, 19])
def test_rank_out_of_range_names_maximum(rank):
    with pytest.raises(ValueError, match="min\\(C\\*kh, N\\*kw\\) = 18"):
        scheme2.fit(np.ones((6, 6, 3, 3), np.float32), rank)


def test_bad_weights_are_refused():
    bad = np.ones((4, 4, 3, 3), np.float32)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        scheme2.fit(bad, 2)


def test_statistics_of_wrong_size_are_refused():
    weights = decaying_weights((4, 3, 3, 3))
    with pytest.raises(ValueError, match="field .mean. has shape \\(26,\\), expected \\(27,\\)"):
        data_objective(weights, Moments.symmetric(10, np.zeros(26), np.eye(26)))
    moments = _correlated_moments(27)
    broken = moments._replace(second_hat=np.full((27, 27), np.inf))
    with pytest.raises(ValueError, match="'second_hat' contains NaN"):
        data_objective(weights, broken)


def test_filter_objective_is_relative_error():
    weights = decaying_weights((5, 4, 3, 3))
    quad = filter_objective(weights)
    assert float(quad.loss(np.zeros_like(weights))) == pytest.approx(1.0)
    assert float(quad.loss(weights / quad.weight_scale)) == pytest.approx(0.0, abs=1e-6)


def test_truncation_data_errors_match_explicit_truncations():
    from solvers.objectives import data_relative_error, refit_bias

    weights = decaying_weights((7, 5, 3, 2), decay=0.8).astype(np.float64)
    bias = np.linspace(-1, 1, 7)
    moments = _correlated_moments(5 * 3 * 2, seed=3)
    closed_form = scheme2.truncation_data_errors(weights, moments.covariance())
    matrix = weights.transpose(1, 2, 0, 3).reshape(15, 14)
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    for rank in range(1, len(s) + 1):
        w_hat = ((u[:, :rank] * s[:rank]) @ vt[:rank]).reshape(5, 3, 7, 2).transpose(2, 0, 1, 3)
        b_hat = refit_bias(weights, bias, w_hat, moments)
        explicit = data_relative_error(weights, bias, w_hat, b_hat, moments)
        assert closed_form[rank - 1] == pytest.approx(explicit, rel=1e-8, abs=1e-12)


def _pointwise_loss(weights, quad, vertical, horizontal):
    return float(quad.loss(np.einsum("nkx,kcy->ncyx", horizontal, vertical) / quad.weight_scale))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_pointwise_data_fit_is_the_reduced_rank_optimum(seed):
    """1x1 kernels: the closed form beats L-BFGS started anywhere and random rank-K candidates,
    is Eckart-Young for white inputs, and exact at full rank."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((12, 9, 1, 1))
    moments = _correlated_moments(9, seed=seed)
    quad = data_objective(weights, moments, dtype=np.float32)
    closed = scheme2.fit(weights.astype(np.float32), 3, quad)
    iterative = scheme2.data_fit(weights.astype(np.float32), quad, 3, 300)
    assert closed.loss <= _pointwise_loss(weights, quad, *iterative) + 1e-5
    for _ in range(20):
        v, h = rng.standard_normal((3, 9, 1)), rng.standard_normal((12, 3, 1))
        assert closed.loss <= _pointwise_loss(weights, quad, v, h)
    white = data_objective(weights, Moments.symmetric(1, np.zeros(9), np.eye(9)), dtype=np.float32)
    sigma = np.linalg.svd(weights[:, :, 0, 0], compute_uv=False)
    assert scheme2.fit(weights.astype(np.float32), 3, white).loss == pytest.approx(
        (sigma[3:] ** 2).sum() / (sigma ** 2).sum(), abs=1e-4)
    assert scheme2.fit(weights.astype(np.float32), 9, quad).loss == pytest.approx(0.0, abs=1e-4)


@pytest.mark.slow
def test_batched_fit_equals_one_by_one():
    weights = np.stack([decaying_weights((8, 6, 3, 3), seed=s) for s in range(3)]).astype(np.float32)
    quads = stack_quadratics([data_objective(w, _correlated_moments(54, seed=s)) for s, w in enumerate(weights)])
    batched = scheme2.fit_batch(weights, 4, quads, 100)
    for index, w in enumerate(weights):
        single = scheme2.fit(w, 4, data_objective(w, _correlated_moments(54, seed=index)), 100)
        assert batched.loss[index] == pytest.approx(single.loss, abs=1e-5)
