"""The CVXPY formulation that recon replaces, kept only as a benchmark reference.

It fits Scheme 1 filter reconstruction the way the seed project did: alternating convex
solves, each basis block with the nuclear-norm penalty handed to CVXPY, on the same
normalised objective as ``solvers.scheme1``

    ||W/||W|| - sum_m a[:, :, m] s_m||^2 + lambda * sum_m ||s_m||_*,  ||a[:, :, m]|| <= 1,

the same lambda schedule and the same SVD start, rank-1 cut and closed-form refit, so the
two can be compared on time and objective. Needs the ``peers`` extra (cvxpy).
"""
from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from solvers.schedule import LambdaSchedule


class ReferenceResult(NamedTuple):
    """Objective at the last stage, relative error after the rank-1 cut, and timing."""

    objective: float
    fit_error: float
    truncated_error: float
    stages: int
    seconds: float
    finished: bool


def _objective(w: np.ndarray, a: np.ndarray, s: np.ndarray, lam: float) -> tuple[float, float]:
    fit = float(np.sum((w - a @ s.reshape(s.shape[0], -1)) ** 2))
    penalty = lam * sum(np.linalg.svd(basis, compute_uv=False).sum() for basis in s)
    return fit + penalty, fit


def _rank_one_ratio(basis: np.ndarray) -> float:
    values = np.linalg.svd(basis, compute_uv=False)
    return float(values[1] / values[0]) if values[0] > 0 else 0.0


def _solve_bases(cp, w: np.ndarray, a: np.ndarray, lam: float, kh: int, kw: int) -> np.ndarray:
    bases = [cp.Variable((kh, kw)) for _ in range(a.shape[1])]
    approx = sum(a[:, m:m + 1] @ cp.reshape(bases[m], (1, kh * kw), order="C") for m in range(a.shape[1]))
    problem = cp.Problem(cp.Minimize(cp.sum_squares(w - approx) + lam * sum(cp.normNuc(b) for b in bases)))
    problem.solve(solver=cp.SCS)
    return np.stack([b.value for b in bases])


def _solve_coeffs(cp, w: np.ndarray, s: np.ndarray) -> np.ndarray:
    a = cp.Variable((w.shape[0], s.shape[0]))
    problem = cp.Problem(cp.Minimize(cp.sum_squares(w - a @ s.reshape(s.shape[0], -1))),
                         [cp.norm(a[:, m]) <= 1 for m in range(s.shape[0])])
    problem.solve(solver=cp.CLARABEL)
    return a.value


def fit(weights: np.ndarray, num_bases: int, schedule: LambdaSchedule = LambdaSchedule(),
        alternations: int = 2, time_limit: float = 600.0) -> ReferenceResult:
    """Run the CVXPY schedule on one layer; stops (finished=False) past ``time_limit`` seconds."""
    import cvxpy as cp

    n, c, kh, kw = weights.shape
    w = np.asarray(weights, np.float64).reshape(n * c, kh * kw)
    w = w / np.linalg.norm(w)
    u, sigma, vt = np.linalg.svd(w, full_matrices=False)
    a = u[:, :num_bases]
    s = (sigma[:num_bases, None] * vt[:num_bases]).reshape(num_bases, kh, kw)
    start = time.perf_counter()
    lam, stages, finished = 0.0, 0, True
    lambdas = schedule.validate().values()
    for lam in lambdas:
        for _ in range(alternations):
            s = _solve_bases(cp, w, a, lam, kh, kw)
            a = _solve_coeffs(cp, w, s)
        stages += 1
        if max(_rank_one_ratio(basis) for basis in s) < schedule.rank_tol or stages == len(lambdas):
            break
        if time.perf_counter() - start > time_limit:
            finished = False
            break
    objective, fit_error = _objective(w, a, s, lam)
    separable = np.stack([np.outer(left[:, 0] * values[0], right[0])
                          for left, values, right in (np.linalg.svd(basis) for basis in s)])
    design = separable.reshape(num_bases, -1).T
    coeffs, *_ = np.linalg.lstsq(design, w.T, rcond=None)
    truncated = float(np.sum((w - coeffs.T @ design.T) ** 2))
    return ReferenceResult(objective, fit_error, truncated, stages, time.perf_counter() - start, finished)
