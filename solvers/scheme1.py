"""Scheme 1 of Jaderberg et al. (2014): every d x d filter slice W[n, c] is a combination of
M shared separable basis filters s_m = v_m h_m^T.

    W_hat[n, c] = sum_m a[n, c, m] s_m

Fitting minimises loss(W_hat) + lambda * sum_m ||s_m||_*  (the paper's eq. 3 with the nuclear
norm as the convex surrogate of rank) by proximal alternating linearised minimisation:
a gradient step on the bases followed by singular value thresholding (the prox of the
nuclear norm), then a gradient step on the coefficients followed by projecting each basis'
coefficient column a[:, :, m] onto the unit ball. That projection fixes the scale ambiguity
(a -> t a, s -> s / t) that would otherwise let the penalty vanish by rescaling. Step sizes
are 1/L from the blocks' Lipschitz bounds, so every step decreases the objective.

lambda follows a continuation schedule (solvers.schedule) from the lambda = 0 optimum, the
rank-M truncated SVD of W reshaped to (N*C) x d^2, warm started stage to stage, until every
basis is numerically rank 1. Each basis is then cut to its top singular pair and the
coefficients are refitted in closed form. With M = kh*kw the canonical separable basis
(e_y e_x^T) spans every filter exactly, so no schedule runs. The whole schedule is one compiled
program (``lax.scan`` over stages, a ``while_loop`` in each that stops once the objective
settles); problems of equal shape are solved together with vmap, and a problem whose bases are
rank 1 is frozen while the others go on.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from solvers import prox
from solvers.errors import DivergenceError, ProblemError
from solvers.linear import solve_shared_design
from solvers.objectives import Quadratic, check_batch, stack_quadratics
from solvers.parallel import shard_leading_axis
from solvers.schedule import LambdaSchedule


class StageReport(NamedTuple):
    """Diagnostics of one lambda stage, one entry per problem of the batch (``steps`` 0 for a
    problem whose bases were already rank 1)."""

    lam: np.ndarray
    objective: np.ndarray
    fit_error: np.ndarray
    max_rank_ratio: np.ndarray
    min_top_energy: np.ndarray
    steps: np.ndarray


class Scheme1Result(NamedTuple):
    """Separable bases and coefficients in the units of the weights, for P problems.

    vertical (P, M, kh), horizontal (P, M, kw), coeffs (P, N, C, M); ``fit_error`` (P,) is
    the relative loss after the rank-1 cut and refit; ``stages`` the per-stage diagnostics.
    """

    vertical: np.ndarray
    horizontal: np.ndarray
    coeffs: np.ndarray
    fit_error: np.ndarray
    lambda_final: np.ndarray
    stages: list[StageReport]


def max_bases(shape: tuple[int, ...]) -> int:
    """The largest useful M for weights (N, C, kh, kw): kh*kw bases span every filter slice."""
    return shape[2] * shape[3]


def check_bases(shape: tuple[int, ...], num_bases: int) -> None:
    """Raise ValueError unless 1 <= num_bases <= max_bases(shape)."""
    if shape[2] == shape[3] == 1:
        raise ProblemError(f"a 1x1 kernel has nothing to separate (weights of shape {tuple(shape)})")
    top = max_bases(shape)
    if not 1 <= num_bases <= top:
        raise ProblemError(
            f"Scheme 1 needs 1 <= M <= kh*kw = {top} for weights of shape {tuple(shape)} "
            f"(more bases than kernel entries cannot help), got M={num_bases}")


def compose(coeffs: jax.Array, bases: jax.Array) -> jax.Array:
    """W_hat (N, C, kh, kw) from coeffs (N, C, M) and bases (M, kh, kw)."""
    return jnp.einsum("ncm,myx->ncyx", coeffs, bases)


def svd_start(scaled_weights: jax.Array, num_bases: int) -> tuple[jax.Array, jax.Array]:
    """The lambda = 0 optimum: rank-M truncated SVD of W reshaped to (N*C) x (kh*kw).

    Coefficients are the left singular vectors (unit columns, inside the constraint set).
    """
    n, c, kh, kw = scaled_weights.shape
    u, s, vt = jnp.linalg.svd(scaled_weights.reshape(n * c, kh * kw), full_matrices=False)
    coeffs = u[:, :num_bases].reshape(n, c, num_bases)
    bases = (s[:num_bases, None] * vt[:num_bases]).reshape(num_bases, kh, kw)
    return coeffs, bases


def _operator_norm_sq(matrix: jax.Array) -> jax.Array:
    """Largest eigenvalue of matrix^T matrix (the squared spectral norm)."""
    return jnp.linalg.eigvalsh(matrix.T @ matrix)[-1]


def _palm_step(carry, quad: Quadratic, lam: jax.Array):
    """One proximal step on the bases, then one projected step on the coefficients."""
    coeffs, bases = carry
    n, c, m = coeffs.shape
    tiny = jnp.finfo(bases.dtype).tiny
    rows = coeffs.reshape(n * c, m)
    # W_hat rows are a[n, c] @ s: the chain rule through compose is two small products
    residual = quad.gradient(compose(coeffs, bases)).reshape(n * c, -1)
    grad_bases = (rows.T @ residual).reshape(bases.shape)
    lip_bases = 2 * quad.lipschitz * _operator_norm_sq(rows) + tiny
    smooth, _ = optax.scale_by_learning_rate(1.0 / lip_bases).update(grad_bases, optax.EmptyState())
    bases = prox.singular_value_threshold(bases + smooth, lam / lip_bases)
    flat_bases = bases.reshape(m, -1)
    residual = quad.gradient(compose(coeffs, bases)).reshape(n * c, -1)
    grad_coeffs = (residual @ flat_bases.T).reshape(coeffs.shape)
    lip_coeffs = 2 * quad.lipschitz * _operator_norm_sq(flat_bases.T) + tiny
    smooth, _ = optax.scale_by_learning_rate(1.0 / lip_coeffs).update(grad_coeffs, optax.EmptyState())
    coeffs = prox.project_columns_to_unit_ball(coeffs + smooth)
    return coeffs, bases


CHECK_EVERY = 5  # PALM steps between two evaluations of the objective (each costs an SVD of every basis)


def _penalised(coeffs, bases, quad: Quadratic, lam):
    """(objective, fit): the loss plus lambda times the bases' nuclear norms, and the loss."""
    fit = quad.loss(compose(coeffs, bases))
    return fit + lam * prox.nuclear_norm(bases).sum(), fit


def _run_stage(carry, lam, quad: Quadratic, max_steps: int, rank_tol: float, tolerance: float):
    """PALM steps at penalty ``lam`` until the objective changes by less than ``tolerance``
    (relative) or ``max_steps``; none once every basis is rank 1. Returns the stage's report."""
    coeffs, bases, done = carry
    tiny = jnp.finfo(bases.dtype).tiny

    def unconverged(state):
        step, _, _, _, change = state
        return (step < max_steps) & (change > tolerance)

    def step(state):
        count, coeffs, bases, previous, _ = state
        coeffs, bases = jax.lax.fori_loop(0, CHECK_EVERY, lambda _, carry: _palm_step(carry, quad, lam),
                                          (coeffs, bases))
        objective, _ = _penalised(coeffs, bases, quad, lam)
        change = jnp.abs(previous - objective) / jnp.maximum(jnp.abs(objective), tiny) / CHECK_EVERY
        return count + CHECK_EVERY, coeffs, bases, objective, change

    start, _ = _penalised(coeffs, bases, quad, lam)
    first_change = jnp.where(done, 0.0, jnp.inf).astype(bases.dtype)
    steps, coeffs, bases, objective, _ = jax.lax.while_loop(unconverged, step, (0, coeffs, bases, start, first_change))
    objective, fit = _penalised(coeffs, bases, quad, lam)
    ratio = prox.rank_one_ratio(bases).max()
    report = (lam, objective, fit, ratio, prox.energy_in_top_singular_value(bases).min(), steps)
    return (coeffs, bases, done | (ratio < rank_tol)), report


def _solve(scaled, quad: Quadratic, lambdas, num_bases: int, max_steps: int, rank_tol: float, tolerance: float):
    """One problem: the lambda = 0 start, the whole schedule (``lax.scan`` over stages), the
    rank-1 cut and the coefficient refit, in one compiled program."""
    coeffs, bases = svd_start(scaled, num_bases)
    stage = lambda carry, lam: _run_stage(carry, lam, quad, max_steps, rank_tol, tolerance)
    (coeffs, bases, _), reports = jax.lax.scan(stage, (coeffs, bases, jnp.asarray(False)), lambdas)
    return _truncate_and_refit(coeffs, bases, quad), reports


def _truncate_and_refit(coeffs, bases, quad: Quadratic):
    """Cut each basis to its top singular pair and refit the coefficients in closed form."""
    n, c, _ = coeffs.shape
    vertical, horizontal = prox.top_singular_pair(bases)
    return _refit(vertical, horizontal, quad, n, c)


def _refit(vertical, horizontal, quad: Quadratic, n: int, c: int):
    """Closed-form coefficients for fixed separable bases v_m h_m^T; returns the factors and loss."""
    m = vertical.shape[0]
    separable = jnp.einsum("my,mx->myx", vertical, horizontal)
    # design[(c, p), (c', m)] = [c == c'] * s_m[p]
    design = jnp.einsum("cd,mp->cpdm", jnp.eye(c, dtype=vertical.dtype), separable.reshape(m, -1))
    theta = solve_shared_design(quad, design.reshape(-1, c * m))
    refit = theta.reshape(n, c, m)
    return vertical, horizontal, refit, quad.loss(compose(refit, separable))


_batched_solve = jax.jit(jax.vmap(_solve, in_axes=(0, 0, 0, None, None, None, None)), static_argnums=(3, 4, 5, 6))
_batched_canonical = jax.jit(jax.vmap(_refit, in_axes=(None, None, 0, None, None)), static_argnums=(3, 4))


def fit_batch(weights: np.ndarray, quads: Quadratic, num_bases: int,
              schedule: LambdaSchedule = LambdaSchedule(), lambda_scale: np.ndarray | None = None,
              progress=None) -> Scheme1Result:
    """Fit Scheme 1 to P problems of equal shape at once.

    Args:
      weights: (P, N, C, kh, kw) conv weights.
      quads: a Quadratic whose arrays carry a leading batch axis P (see ``stack_quadratics``).
      num_bases: M, the number of separable bases per problem.
      schedule: the lambda continuation schedule.
      lambda_scale: (P,) multipliers of the schedule's lambda per problem (a lambda grid).
      progress: optional callable(stage_index, StageReport) for progress output.
    Returns:
      Scheme1Result with bases and coefficients in the units of the weights.
    Raises:
      ProblemError for bad weights, M or schedule; DivergenceError naming the stage where the
      solve went non-finite.
    """
    weights = check_batch(weights)
    check_bases(weights.shape[1:], num_bases)
    lambdas = schedule.validate().values()
    problems = weights.shape[0]
    scale = np.ones(problems) if lambda_scale is None else np.asarray(lambda_scale, np.float64)
    if scale.shape != (problems,) or not np.all(scale > 0):
        raise ProblemError(f"lambda_scale must be {problems} positive numbers, got {scale}")
    dtype = quads.B.dtype
    weight_scale = np.asarray(quads.weight_scale).reshape(problems, 1, 1, 1, 1)
    scaled, quads = shard_leading_axis((jnp.asarray(weights / weight_scale, dtype), quads))
    n, c, kh, kw = weights.shape[1:]
    if num_bases == kh * kw:
        eye = np.eye(kh * kw).reshape(kh * kw, kh, kw)
        canonical = (jnp.asarray(eye.sum(2), dtype), jnp.asarray(eye.sum(1), dtype))
        return _finish(_batched_canonical(*canonical, quads, n, c), weight_scale, np.zeros(problems), [])
    lambdas = jnp.asarray(np.outer(scale, lambdas), dtype)
    factors, reports = _batched_solve(scaled, quads, lambdas, num_bases, schedule.steps_per_stage,
                                      schedule.rank_tol, schedule.tolerance)
    reports = [np.asarray(values) for values in jax.block_until_ready(reports)]  # each (P, stages)
    ran = reports[-1] > 0
    if not np.all(np.isfinite(reports[1][ran])):
        stage, problem = np.argwhere(ran & ~np.isfinite(reports[1]))[0]
        raise DivergenceError(f"Scheme 1 solve went non-finite at stage {stage} "
                              f"(lambda={reports[0][problem, stage]:g}) for problem {problem}")
    stages = [StageReport(*(values[:, index] for values in reports)) for index in np.flatnonzero(ran.any(0))]
    if progress is not None:
        for index, report in enumerate(stages):
            progress(index, report)
    last = np.where(ran.any(1), ran.shape[1] - 1 - np.argmax(ran[:, ::-1], axis=1), 0)
    return _finish(factors, weight_scale, reports[0][np.arange(problems), last], stages)


def _finish(factors, weight_scale: np.ndarray, final_lambda: np.ndarray, stages: list[StageReport]) -> Scheme1Result:
    """Scheme1Result in the units of the weights from the scaled refit factors."""
    vertical, horizontal, refit, fit_error = jax.block_until_ready(factors)
    vertical = np.broadcast_to(vertical, (len(weight_scale), *np.shape(vertical)[-2:]))
    horizontal = np.broadcast_to(horizontal, (len(weight_scale), *np.shape(horizontal)[-2:]))
    coeffs_out = np.asarray(refit) * weight_scale[..., 0]
    if not np.all(np.isfinite(coeffs_out)):
        raise DivergenceError("Scheme 1 coefficient refit after the rank-1 cut produced non-finite values")
    return Scheme1Result(np.array(vertical), np.array(horizontal), coeffs_out,
                         np.asarray(fit_error), final_lambda, stages)


def fit(weights: np.ndarray, quad: Quadratic, num_bases: int,
        schedule: LambdaSchedule = LambdaSchedule(), progress=None) -> Scheme1Result:
    """Fit Scheme 1 to one layer; the result keeps a batch axis of length 1."""
    return fit_batch(np.asarray(weights)[None], stack_quadratics([quad]), num_bases, schedule,
                     progress=progress)
