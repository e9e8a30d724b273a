"""Proximal operators and projections used by the Scheme 1 solver.

The prox of tau * ||X||_* (nuclear norm) is singular value thresholding:
X = U diag(s) V^T  ->  U diag(max(s - tau, 0)) V^T  (Cai, Candes & Shen 2010).
All functions work on a batch of matrices (leading axes are batch axes).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def singular_value_threshold(matrices: jax.Array, tau: jax.Array | float) -> jax.Array:
    """prox_{tau ||.||_*} applied to each matrix of ``matrices`` (..., m, n)."""
    u, s, vt = jnp.linalg.svd(matrices, full_matrices=False)
    shrunk = jnp.maximum(s - tau, 0.0)
    return jnp.einsum("...ik,...k,...kj->...ij", u, shrunk, vt)


def nuclear_norm(matrices: jax.Array) -> jax.Array:
    """Sum of singular values of each matrix (..., m, n) -> (...)."""
    return jnp.linalg.svd(matrices, compute_uv=False).sum(-1)


def rank_one_ratio(matrices: jax.Array) -> jax.Array:
    """sigma_2 / sigma_1 of each matrix (..., m, n); 0 for a rank-1 (or zero) matrix."""
    s = jnp.linalg.svd(matrices, compute_uv=False)
    return jnp.where(s[..., 0] > 0, s[..., 1] / jnp.where(s[..., 0] > 0, s[..., 0], 1.0), 0.0)


def energy_in_top_singular_value(matrices: jax.Array) -> jax.Array:
    """sigma_1^2 / sum sigma_i^2 of each matrix: the fraction of energy a rank-1 cut keeps."""
    s2 = jnp.linalg.svd(matrices, compute_uv=False) ** 2
    return s2[..., 0] / jnp.maximum(s2.sum(-1), jnp.finfo(s2.dtype).tiny)


def top_singular_pair(matrices: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Best rank-1 factors of each matrix (..., m, n): u * sqrt(s1) (..., m), v * sqrt(s1) (..., n)."""
    u, s, vt = jnp.linalg.svd(matrices, full_matrices=False)
    root = jnp.sqrt(s[..., 0])
    return u[..., :, 0] * root[..., None], vt[..., 0, :] * root[..., None]


def project_columns_to_unit_ball(coeffs: jax.Array) -> jax.Array:
    """Project each basis' coefficient column coeffs[..., m] onto the unit L2 ball.

    ``coeffs`` is (N, C, M); column m holds every coefficient of basis m. Bounding these
    columns fixes the scale ambiguity between coefficients and bases, so the nuclear-norm
    penalty on the bases cannot be dodged by shrinking bases and growing coefficients.
    """
    per_basis = jnp.moveaxis(coeffs, -1, 0)
    projected = jax.vmap(optax.projections.projection_l2_ball)(per_basis)
    return jnp.moveaxis(projected, 0, -1)
