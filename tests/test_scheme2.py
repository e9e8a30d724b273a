import jax
import jax.numpy as jnp
import numpy as np
import optax
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


def _raw_lbfgs(weights, quad, rank, iterations):
    """The reference the whitened solver replaced: L-BFGS on the raw factors from the SVD."""
    loss = lambda factors: quad.loss(scheme2.compose(*factors))
    optimizer, value_and_grad = optax.lbfgs(), optax.value_and_grad_from_state(loss)

    def step(_, carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = optimizer.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state

    start = scheme2.filter_fit(weights / quad.weight_scale, rank)
    params, _ = jax.lax.fori_loop(0, iterations, step, (start, optimizer.init(start)))
    return float(loss(params))


def _separable_moments(c, kh, kw, seed=0):
    """Zero-mean statistics whose covariance is exactly A_rows (x) A_cols, both ill-conditioned."""
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((c * kh, c * kh)) * np.logspace(0, -2, c * kh)
    cols = rng.standard_normal((kw, kw)) * np.logspace(0, -1, kw)
    covariance = np.kron(rows @ rows.T, cols @ cols.T)
    return Moments.symmetric(1, np.zeros(c * kh * kw), covariance)


@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 6), c=st.integers(1, 4), kh=st.integers(1, 3), kw=st.integers(2, 3), seed=st.integers(0, 99))
def test_whitening_round_trips_and_is_the_separable_factorisation(n, c, kh, kw, seed):
    with jax.enable_x64(True):
        _check_whitening(n, c, kh, kw, seed)


def _check_whitening(n, c, kh, kw, seed):
    moments = _separable_moments(c, kh, kw, seed)
    weights = np.random.default_rng(seed).standard_normal((n, c, kh, kw))
    quad = data_objective(weights, moments, ridge=0.0, dtype=jnp.float64)
    whitening = scheme2.Whitening.of(quad.A, kw)
    rows, cols = np.asarray(whitening.rows), np.asarray(whitening.columns)
    np.testing.assert_allclose(np.kron(rows @ rows.T, cols @ cols.T), np.asarray(quad.A), rtol=1e-4,
                               atol=1e-5 * np.abs(quad.A).max())
    rank = min(c * kh, n * kw)
    factors = scheme2.Scheme2Factors(np.random.default_rng(1).standard_normal((rank, c, kh)),
                                     np.random.default_rng(2).standard_normal((n, rank, kw)))
    back = whitening.unwhiten(whitening.whiten(factors))
    np.testing.assert_allclose(back.vertical, factors.vertical, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(back.horizontal, factors.horizontal, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("seed", range(3))
def test_the_whitened_start_is_the_optimum_for_separable_statistics(seed):
    """For A = A_rows (x) A_cols the whitened SVD is exact: neither random nudges nor a long
    L-BFGS on the raw factors find a lower loss."""
    with jax.enable_x64(True):
        _check_separable_optimum(seed)


def _check_separable_optimum(seed):
    n, c, kh, kw, rank = 6, 4, 3, 3, 3
    weights = decaying_weights((n, c, kh, kw), seed=seed).astype(np.float64)
    quad = data_objective(weights, _separable_moments(c, kh, kw, seed), ridge=0.0, dtype=jnp.float64)
    whitening = scheme2.Whitening.of(quad.A, kw)
    start = whitening.unwhiten(whitening.optimum_start(np.asarray(quad.A), np.asarray(quad.B), rank, weights.shape))
    best = float(quad.loss(scheme2.compose(*start)))
    assert best <= _raw_lbfgs(weights, quad, rank, 3000) + 1e-7
    rng = np.random.default_rng(seed)
    for _ in range(20):
        nudged = [factor + 1e-3 * np.abs(factor).max() * rng.standard_normal(factor.shape) for factor in start]
        assert best <= float(quad.loss(scheme2.compose(*nudged)))


@pytest.mark.parametrize("seed", range(3))
def test_whitened_fit_beats_200_raw_lbfgs_iterations_on_ill_conditioned_inputs(seed):
    """Patch statistics like a conv's (ill-conditioned, nearly separable): 64 whitened
    iterations end below 200 raw ones (64 raw ones end 0.06-0.4% above them here)."""
    c, kh, kw = 8, 3, 3
    separable = _separable_moments(c, kh, kw, seed).second_hat
    mixing = np.random.default_rng(seed + 10).standard_normal((c * kh * kw, c * kh * kw))
    covariance = separable + 0.01 * np.trace(separable) * (mixing @ mixing.T) / (c * kh * kw) ** 2
    weights = decaying_weights((16, c, kh, kw), decay=0.85, seed=seed)
    quad = data_objective(weights, Moments.symmetric(1, np.zeros(c * kh * kw), covariance))
    result = scheme2.fit(weights, 6, quad)
    assert result.loss <= _raw_lbfgs(weights.astype(np.float32), quad, 6, 200) * (1 + 1e-5)


def test_small_shapes_share_max_rank_slots_and_large_ones_round_up_to_powers_of_two():
    assert {scheme2.filter_slots((64, 64, 3, 3), rank, 64) for rank in (1, 20, 192)} == {192}
    assert [scheme2.filter_slots((256, 192, 3, 3), rank, 64) for rank in (1, 115, 500, 576)] == [1, 128, 512, 576]
    assert scheme2.filter_slots((2048, 512, 1, 1), 7, 64) == 512


@pytest.mark.parametrize("kernel,ranks,budget", [((3, 3), (1, 5, 18), scheme2.SLOT_BUDGET), ((3, 3), (3, 5), 0),
                                                 ((1, 1), (1, 4, 6), scheme2.SLOT_BUDGET)])
def test_every_rank_solved_in_padded_slots_equals_its_own_solve(kernel, ranks, budget, monkeypatch):
    """fit_batch solves a rank in more filter slots than it has (max_rank for small shapes, the
    next power of two with no budget) and batches in powers of two: the unused slots must not
    change the fit. Reference: the solve compiled at exactly that rank, one problem at a time."""
    monkeypatch.setattr(scheme2, "SLOT_BUDGET", budget)
    weights = np.stack([decaying_weights((6, 6, *kernel), seed=s) for s in range(3)]).astype(np.float32)
    dim = 6 * kernel[0] * kernel[1]
    objectives = [data_objective(w, _correlated_moments(dim, seed=s)) for s, w in enumerate(weights)]
    for rank in ranks:
        batched = scheme2.fit_batch(weights, rank, stack_quadratics(objectives), 40)
        assert batched.vertical.shape[:2] == (3, rank) and batched.horizontal.shape[:3] == (3, 6, rank)
        for index, (w, quad) in enumerate(zip(weights, objectives)):
            if kernel == (1, 1):
                own = jax.jit(scheme2.reduced_rank_fit, static_argnums=2)(w, quad, rank)
            else:
                prepared = scheme2.prepare(w, quad, rank)
                own = jax.jit(scheme2.data_fit, static_argnums=(2, 3))(w, quad, rank, 40, prepared)
            expected = float(quad.loss(scheme2.compose(*own) / quad.weight_scale))
            got = float(quad.loss(np.einsum("nkx,kcy->ncyx", batched.horizontal[index], batched.vertical[index])
                                  / quad.weight_scale))
            assert got == pytest.approx(expected, rel=1e-4, abs=1e-6)
            assert batched.loss[index] == pytest.approx(got, rel=1e-4, abs=1e-6)
