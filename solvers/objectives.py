"""Reconstruction objectives as one quadratic form in the approximated weights.

Weights W (N, C, kh, kw) are flattened to W (N, D), D = C*kh*kw, in (c, y, x) order, the
order of an input patch x (as ``torch.nn.functional.unfold`` lays it out). Both modes are

    loss(W_hat) = (c - 2 <W_hat, B> + tr(W_hat A W_hat^T)) / c

* filter reconstruction ||W - W_hat||_F^2:           A = I, B = W, c = ||W||_F^2.
* data reconstruction E||(W x + b) - (W_hat x_hat + b_hat)||^2 with the bias refitted
  (b_hat = b + W E[x] - W_hat E[x_hat], the optimum for any W_hat):
  A = Cov(x_hat), B = W Cov(x, x_hat), c = tr(W Cov(x) W^T)  (Jaderberg et al. 2014, sec. 3.3;
  asymmetric inputs x_hat from the approximated upstream network as in Zhang et al. 2015).
  With x_hat = x it is the symmetric form tr((W - W_hat) Cov(x) (W - W_hat)^T).

Dividing by c makes the loss a relative error (1 for W_hat = 0). Solvers work on weights in
units of ``weight_scale`` = ||W||_F (so B and A below are for W_hat / ||W||_F): the
nuclear-norm penalty lambda * ||s_m||_* then means the same for a layer of any magnitude.
Statistics enter only through second moments, so a solver step never touches the data set.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Moments(NamedTuple):
    """First and second moments of a layer's input patches (all float64 NumPy).

    mean (D,) = E[x]; second (D, D) = E[x x^T]; for the asymmetric form also
    mean_hat = E[x_hat], cross = E[x x_hat^T], second_hat = E[x_hat x_hat^T]
    (x_hat: the same patch seen through the already approximated upstream layers).
    """

    count: int
    mean: np.ndarray
    second: np.ndarray
    mean_hat: np.ndarray
    cross: np.ndarray
    second_hat: np.ndarray

    @classmethod
    def symmetric(cls, count: int, mean: np.ndarray, second: np.ndarray) -> "Moments":
        """Moments for x_hat = x."""
        return cls(count, mean, second, mean, second, second)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def covariances(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cov(x), Cov(x, x_hat), Cov(x_hat) from the raw moments."""
        return (self.second - np.outer(self.mean, self.mean),
                self.cross - np.outer(self.mean, self.mean_hat),
                self.second_hat - np.outer(self.mean_hat, self.mean_hat))


class Quadratic(NamedTuple):
    """Normalised loss(U) = 1 - 2 <U, B> + tr(U A U^T) of the scaled weights U = W_hat / weight_scale.

    ``lipschitz`` is the largest eigenvalue of A: it bounds the curvature of the loss and
    sets the solvers' step sizes. A None stands for ``lipschitz`` times the identity (filter
    reconstruction), so no D x D matrix is formed.
    """

    B: jax.Array
    A: jax.Array | None
    lipschitz: jax.Array
    weight_scale: jax.Array

    def loss(self, scaled: jax.Array) -> jax.Array:
        """Relative reconstruction error of W_hat = scaled * weight_scale, (N, D) or (N, C, kh, kw)."""
        flat = scaled.reshape(self.B.shape)
        quad = self.lipschitz * jnp.vdot(flat, flat) if self.A is None else jnp.vdot(flat @ self.A, flat)
        return 1.0 - 2.0 * jnp.vdot(flat, self.B) + quad


def quadratic_trace(left: np.ndarray, matrix: np.ndarray, right: np.ndarray) -> float:
    """tr(left @ matrix @ right^T) through BLAS matrix products (einsum would loop naively)."""
    return float(np.sum((left @ matrix) * right))


def check_weights(weights: np.ndarray) -> np.ndarray:
    """Validate a 4-D conv weight (N, C, kh, kw): finite, non-zero, something to separate."""
    weights = np.asarray(weights)
    if weights.ndim != 4:
        raise ValueError(f"weights must be 4-D (out, in, kh, kw), got shape {weights.shape}")
    if weights.shape[2] < 2 and weights.shape[3] < 2:
        raise ValueError(
            f"kernel {weights.shape[2]}x{weights.shape[3]} has nothing to separate; "
            "low-rank expansion needs a kernel larger than 1x1")
    if not np.all(np.isfinite(weights)):
        raise ValueError("weights contain NaN or infinite values")
    if not np.any(weights):
        raise ValueError("weights are all zero: nothing to approximate")
    return weights


def filter_objective(weights: np.ndarray, dtype=jnp.float32) -> Quadratic:
    """||W - W_hat||_F^2 / ||W||_F^2 as a Quadratic."""
    weights = check_weights(weights)
    flat = weights.reshape(weights.shape[0], -1).astype(np.float64)
    norm = float(np.sqrt(np.vdot(flat, flat)))
    return Quadratic(B=jnp.asarray(flat / norm, dtype), A=None, lipschitz=jnp.asarray(1.0, dtype),
                     weight_scale=jnp.asarray(norm, dtype))


def check_moments(moments: Moments, dim: int) -> None:
    """Raise ValueError if the moments do not describe D-dimensional patches or are not finite."""
    shapes = {"mean": (dim,), "second": (dim, dim), "mean_hat": (dim,), "cross": (dim, dim),
              "second_hat": (dim, dim)}
    for field, shape in shapes.items():
        value = np.asarray(getattr(moments, field))
        if value.shape != shape:
            raise ValueError(
                f"statistics field {field!r} has shape {value.shape}, expected {shape} "
                f"(patch size C*kh*kw = {dim})")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"statistics field {field!r} contains NaN or infinite values")
    if moments.count < 1:
        raise ValueError(f"statistics were gathered from {moments.count} patches; need at least 1")


def data_objective(weights: np.ndarray, moments: Moments, dtype=jnp.float32) -> Quadratic:
    """Output-matching loss with bias refit (see module docstring) as a Quadratic."""
    weights = check_weights(weights)
    flat = weights.reshape(weights.shape[0], -1).astype(np.float64)
    check_moments(moments, flat.shape[1])
    cov, cov_cross, cov_hat = moments.covariances()
    scale = quadratic_trace(flat, cov, flat)
    if not scale > 0:
        raise ValueError("the layer's outputs do not vary on these statistics (output variance 0)")
    norm = float(np.sqrt(np.vdot(flat, flat)))
    a_matrix = cov_hat * (norm * norm / scale)
    top = float(np.linalg.eigvalsh(a_matrix)[-1])
    return Quadratic(B=jnp.asarray(flat @ cov_cross * (norm / scale), dtype), A=jnp.asarray(a_matrix, dtype),
                     lipschitz=jnp.asarray(top, dtype), weight_scale=jnp.asarray(norm, dtype))


def refit_bias(weights: np.ndarray, bias: np.ndarray | None, w_hat: np.ndarray,
               moments: Moments) -> np.ndarray:
    """b_hat = b + W E[x] - W_hat E[x_hat]: the bias that best matches the outputs given W_hat."""
    flat = np.asarray(weights, np.float64).reshape(weights.shape[0], -1)
    flat_hat = np.asarray(w_hat, np.float64).reshape(flat.shape)
    base = np.zeros(flat.shape[0]) if bias is None else np.asarray(bias, np.float64)
    return base + flat @ moments.mean - flat_hat @ moments.mean_hat


def filter_relative_error(weights: np.ndarray, w_hat: np.ndarray) -> float:
    """||W - W_hat||_F^2 / ||W||_F^2, in float64."""
    weights = np.asarray(weights, np.float64)
    return float(np.sum((weights - np.asarray(w_hat, np.float64)) ** 2) / np.sum(weights ** 2))


def data_relative_error(weights: np.ndarray, bias: np.ndarray | None, w_hat: np.ndarray,
                        bias_hat: np.ndarray | None, moments: Moments) -> float:
    """E||(W x + b) - (W_hat x_hat + b_hat)||^2 / E||W x - E[W x]||^2, in float64.

    The denominator is the layer's output variance, so 0 is a perfect match and 1 is as bad as
    predicting each output channel's mean.
    """
    flat = np.asarray(weights, np.float64).reshape(weights.shape[0], -1)
    flat_hat = np.asarray(w_hat, np.float64).reshape(flat.shape)
    n = flat.shape[0]
    delta = (np.zeros(n) if bias is None else np.asarray(bias, np.float64)) - (
        np.zeros(n) if bias_hat is None else np.asarray(bias_hat, np.float64))
    err = (quadratic_trace(flat, moments.second, flat)
           - 2 * quadratic_trace(flat, moments.cross, flat_hat)
           + quadratic_trace(flat_hat, moments.second_hat, flat_hat)
           + 2 * delta @ (flat @ moments.mean - flat_hat @ moments.mean_hat) + delta @ delta)
    cov = moments.covariances()[0]
    return float(err / quadratic_trace(flat, cov, flat))
