"""Rank selection by empirical variational Bayesian matrix factorisation (EVBMF).

Nakajima, Sugiyama, Babacan & Tomioka, "Global analytic solution of fully-observed
variational Bayesian matrix factorization", JMLR 2013. For Y (L x M, L <= M) observed with
Gaussian noise of unknown variance sigma^2, the EVBMF solution keeps exactly the singular
components with gamma_h > sigma * sqrt(M * x_bar), x_bar = (1 + tau_bar)(1 + alpha / tau_bar),
alpha = L / M, where tau_bar is the zero of Phi(tau) + Phi(tau / alpha),
Phi(z) = log(1 + z) / z - 1/2. sigma^2 is
the minimiser of the (one-dimensional, not convex) free energy: the best point of a log grid,
refined by a bounded scalar search.
Tucker-2 uses it on the mode unfoldings of conv weights to pick ranks without data.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import brentq, minimize_scalar


def _tau_bar(alpha: float) -> float:
    """The zero of Xi(tau; alpha) = Phi(tau) + Phi(tau / alpha), Phi(z) = log(1 + z) / z - 1/2.

    Xi falls from 1 to -1 as tau grows, so the root is unique (2.5129 for alpha = 1).
    """
    phi = lambda z: np.log1p(z) / z - 0.5
    return float(brentq(lambda t: phi(t) + phi(t / alpha), 1e-8, 1e8))


def _free_energy_terms(x: np.ndarray, alpha: float, x_bar: float) -> np.ndarray:
    """Per-component free energy as a function of x = gamma^2 / (M sigma^2)."""
    base = x - np.log(x)
    above = x > x_bar
    xa = x[above]
    tau = 0.5 * (xa - (1 + alpha) + np.sqrt((xa - (1 + alpha)) ** 2 - 4 * alpha))
    extra = np.zeros_like(x)
    extra[above] = np.log(tau + 1) + alpha * np.log(tau / alpha + 1) - tau
    return base + extra


def noise_variance(singular_values: np.ndarray, shape: tuple[int, int], total_energy: float | None = None) -> float:
    """EVBMF estimate of sigma^2 for a matrix of ``shape`` with these singular values."""
    rows, cols = sorted(shape)
    s = np.sort(np.asarray(singular_values, np.float64))[::-1][:rows]
    alpha = rows / cols
    tau = _tau_bar(alpha)
    x_bar = (1 + tau) * (1 + alpha / tau)
    energy = float(np.sum(s ** 2)) if total_energy is None else float(total_energy)
    residual = energy - float(np.sum(s ** 2))
    upper_rank = int(np.ceil(rows / (1 + alpha))) - 1
    lower = max(s[upper_rank] ** 2 / (cols * x_bar) if upper_rank < len(s) else 0.0,
                float(np.mean(s[upper_rank:] ** 2)) / cols if upper_rank < len(s) else 0.0)
    upper = energy / (rows * cols)
    if not lower < upper:
        return upper

    def free_energy(sigma2: float) -> float:
        x = s ** 2 / (cols * sigma2)
        return float(np.sum(_free_energy_terms(x, alpha, x_bar)) + residual / (cols * sigma2))

    # the free energy is not convex in sigma^2: search a log grid, then refine around its best point
    grid = np.geomspace(lower, upper, 64)
    best = int(np.argmin([free_energy(v) for v in grid]))
    bounds = (grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)])
    return float(minimize_scalar(free_energy, bounds=bounds, method="bounded").x)


def evbmf_rank(matrix: np.ndarray) -> int:
    """Number of components EVBMF keeps for ``matrix`` (at least 1)."""
    matrix = np.asarray(matrix, np.float64)
    rows, cols = sorted(matrix.shape)
    s = np.linalg.svd(matrix, compute_uv=False)
    sigma2 = noise_variance(s, matrix.shape, float(np.sum(matrix ** 2)))
    alpha = rows / cols
    tau = _tau_bar(alpha)
    threshold = np.sqrt(sigma2 * cols * (1 + tau) * (1 + alpha / tau))
    return max(1, int(np.sum(s > threshold)))

