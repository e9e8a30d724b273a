import numpy as np
import pytest

from solvers import scheme1
from solvers.objectives import filter_objective, stack_quadratics
from solvers.schedule import LambdaSchedule
from tests.helpers import decaying_weights


def separable_weights(n, c, m, kh, kw, seed=0):
    rng = np.random.default_rng(seed)
    v, h, a = rng.standard_normal((m, kh)), rng.standard_normal((m, kw)), rng.standard_normal((n, c, m))
    return np.einsum("ncm,my,mx->ncyx", a, v, h).astype(np.float32)


def compose(result, index=0):
    return np.einsum("ncm,my,mx->ncyx", result.coeffs[index], result.vertical[index], result.horizontal[index])


@pytest.mark.parametrize("shape", [(16, 8, 3, 5, 5), (12, 10, 4, 3, 3), (20, 6, 2, 5, 3)])
def test_recovers_known_separable_bases(shape):
    n, c, m, kh, kw = shape
    weights = separable_weights(n, c, m, kh, kw)
    result = scheme1.fit(weights, filter_objective(weights), m)
    error = np.sum((weights - compose(result)) ** 2) / np.sum(weights ** 2)
    assert error < 1e-3
    for v, h in zip(result.vertical[0], result.horizontal[0]):
        assert np.linalg.matrix_rank(np.outer(v, h)) == 1
    assert result.stages[-1].max_rank_ratio[0] < LambdaSchedule().rank_tol


def test_schedule_diagnostics_follow_theory():
    weights = decaying_weights((16, 12, 5, 5), decay=0.9)
    result = scheme1.fit(weights, filter_objective(weights), 4,
                         LambdaSchedule(lambda_min=1e-3, growth=2.0, rank_tol=1e-4, steps_per_stage=300))
    lambdas = [s.lam[0] for s in result.stages]
    fits = [s.fit_error[0] for s in result.stages]
    ratios = [s.max_rank_ratio[0] for s in result.stages]
    assert np.all(np.diff(lambdas) > 0)
    # a larger nuclear-norm penalty never fits the weights better, and ends rank 1
    assert np.all(np.diff(fits) >= -1e-4)
    assert ratios[-1] < ratios[0]
    assert ratios[-1] < 1e-4
    # the rank-1 cut and closed-form refit cannot beat the unconstrained lambda=0 optimum
    sigma = np.linalg.svd(weights.reshape(16 * 12, 25).astype(np.float64), compute_uv=False)
    assert result.fit_error[0] >= (sigma[4:] ** 2).sum() / (sigma ** 2).sum() - 1e-5
    assert np.sum((weights - compose(result)) ** 2) / np.sum(weights ** 2) == pytest.approx(result.fit_error[0], abs=1e-4)


def test_batched_equals_one_by_one():
    weights = np.stack([decaying_weights((8, 6, 3, 3), seed=s) for s in range(3)])
    quads = stack_quadratics([filter_objective(w) for w in weights])
    batched = scheme1.fit_batch(weights, quads, 3)
    for index, w in enumerate(weights):
        single = scheme1.fit(w, filter_objective(w), 3)
        # float32 differences between batched and single kernels can end a stage a step apart
        assert batched.fit_error[index] == pytest.approx(single.fit_error[0], abs=1e-4)
        np.testing.assert_allclose(compose(batched, index), compose(single), atol=1e-3)


@pytest.mark.parametrize("bases", [0, 10])
def test_bases_out_of_range_names_maximum(bases):
    weights = decaying_weights((4, 4, 3, 3))
    with pytest.raises(ValueError, match="M <= kh\\*kw = 9"):
        scheme1.fit(weights, filter_objective(weights), bases)


@pytest.mark.parametrize("bad, message", [
    (dict(lambda_max=1e-4), "lambda_max must be >= lambda_min"),
    (dict(growth=0.5), "growth must be > 1"),
    (dict(lambda_min=-1.0), "lambda_min must be"),
    (dict(rank_tol=2.0), "rank_tol"),
])
def test_schedule_out_of_order_is_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        LambdaSchedule(**bad).validate()


def test_schedule_values_are_geometric_and_capped():
    values = LambdaSchedule(lambda_min=0.01, lambda_max=0.1, growth=2.0, max_stages=10).values()
    np.testing.assert_allclose(values, [0.01, 0.02, 0.04, 0.08, 0.1], rtol=1e-6)
