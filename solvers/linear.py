"""Closed-form least squares for a factor that enters the weights linearly.

Both schemes have a factor theta with W_hat[n] = Phi theta[n] for a design Phi (D, P)
shared by all outputs n (Scheme 1: the coefficients given the bases; Scheme 2: the
horizontal filters given the vertical ones). Minimising the Quadratic loss over theta gives
the normal equations (Phi^T A Phi) theta[n] = Phi^T B[n].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from solvers.objectives import Quadratic

RIDGE = 1e-7  # relative to the mean diagonal: keeps a degenerate design (a dead basis) solvable


def solve_shared_design(quad: Quadratic, design: jax.Array, used: jax.Array | None = None) -> jax.Array:
    """theta (N, P) minimising quad.loss(theta @ design^T) for design (D, P); ``used``: how
    many of the P columns are not zero (default all), for the ridge's mean diagonal."""
    a_design = quad.lipschitz * design if quad.A is None else quad.A @ design
    gram = design.T @ a_design
    used = gram.shape[0] if used is None else used
    gram = gram + RIDGE * jnp.trace(gram) / used * jnp.eye(gram.shape[0], dtype=gram.dtype)
    rhs = quad.B @ design
    return jax.scipy.linalg.solve(gram, rhs.T, assume_a="pos").T
