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

from solvers.errors import ProblemError


class Moments(NamedTuple):
    """Moments of a layer's input patches (float64 NumPy), all the data objective needs.

    x is a patch of the dense model's input to the layer, x_hat the same patch seen through
    the already approximated upstream layers (Zhang et al. 2015); x_hat = x in the symmetric
    form. mean (D,) = E[x], mean_hat = E[x_hat], second_hat (D, D) = E[x_hat x_hat^T].
    The asymmetric form adds, projected on the layer's own weights W (N, D):
    output_cross (N, D) = E[(W x) x_hat^T] and output_energy = E||W x||^2, which is all the
    objective needs of E[x x_hat^T] and E[x x^T], at N/D of their cost. Both are None in the
    symmetric form, where they follow from second_hat. For a grouped convolution every array
    carries a leading group axis (each group's inputs and outputs alone); ``group`` picks one.
    ``held_out``, when given, holds the same moments of a subset of the samples (included in
    these), kept aside to judge a fit on samples it was not fitted to (``without_held_out``).
    """

    count: int
    mean: np.ndarray
    mean_hat: np.ndarray
    second_hat: np.ndarray
    output_cross: np.ndarray | None = None
    output_energy: float | None = None
    held_out: "Moments | None" = None

    @classmethod
    def symmetric(cls, count: int, mean: np.ndarray, second: np.ndarray,
                  held_out: "Moments | None" = None) -> "Moments":
        """Moments for x_hat = x, from E[x] and E[x x^T]."""
        return cls(count, mean, mean, second, held_out=held_out)

    @property
    def has_held_out(self) -> bool:
        """Whether ``held_out`` splits these moments: some patches on each side."""
        return self.held_out is not None and 0 < self.held_out.count < self.count

    def without_held_out(self) -> "Moments":
        """The moments of the samples that are not in ``held_out`` (the means are weighted by
        their counts, so the rest follows exactly); ProblemError unless ``has_held_out``."""
        held = self.held_out
        if not self.has_held_out:
            raise ProblemError(f"these moments hold out {0 if held is None else held.count} of {self.count} "
                               "patches; a held-out split needs some on each side")
        rest = self.count - held.count
        part = lambda field: None if getattr(self, field) is None else (
            self.count * np.asarray(getattr(self, field)) - held.count * np.asarray(getattr(held, field))) / rest
        return Moments(rest, *(part(field) for field in ("mean", "mean_hat", "second_hat", "output_cross",
                                                         "output_energy")))

    @property
    def is_symmetric(self) -> bool:
        return self.output_cross is None

    @property
    def groups(self) -> int:
        """G when the arrays carry a leading group axis (a grouped convolution's groups), else 1."""
        return 1 if np.ndim(self.mean) == 1 else int(np.shape(self.mean)[0])

    def group(self, index: int) -> "Moments":
        """The moments of group ``index`` (the moments themselves when not grouped)."""
        if np.ndim(self.mean) == 1:
            return self
        pick = lambda value: None if value is None else value[index]
        return Moments(self.count, self.mean[index], self.mean_hat[index], self.second_hat[index],
                       pick(self.output_cross), pick(self.output_energy),
                       None if self.held_out is None else self.held_out.group(index))

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def covariance(self) -> np.ndarray:
        """Cov(x) of the symmetric form (the asymmetric form does not keep it)."""
        if not self.is_symmetric:
            raise ProblemError("asymmetric moments keep Cov(x) only projected on the weights")
        return self.covariance_hat()

    def covariance_hat(self) -> np.ndarray:
        """Cov(x_hat); of each group (G, D/G, D/G) for a grouped layer's moments."""
        mean = self.mean_hat
        return self.second_hat - (np.outer(mean, mean) if mean.ndim == 1 else mean[:, :, None] * mean[:, None, :])

    def output_moment(self, flat_weights: np.ndarray) -> np.ndarray:
        """E[(W x) x_hat^T] (N, D) for the layer's flattened weights W (N, D)."""
        return flat_weights @ self.second_hat if self.is_symmetric else self.output_cross

    def output_second(self, flat_weights: np.ndarray) -> float:
        """E||W x||^2."""
        return quadratic_trace(flat_weights, self.second_hat, flat_weights) if self.is_symmetric else self.output_energy

    def output_variance(self, flat_weights: np.ndarray) -> float:
        """E||W x - E[W x]||^2, the total variance of the layer's outputs."""
        centre = flat_weights @ self.mean
        return self.output_second(flat_weights) - float(centre @ centre)

    def output_covariance(self, flat_weights: np.ndarray) -> np.ndarray:
        """W Cov(x, x_hat) (N, D)."""
        return self.output_moment(flat_weights) - np.outer(flat_weights @ self.mean, self.mean_hat)


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

    def gradient(self, scaled: jax.Array) -> jax.Array:
        """The gradient of ``loss`` at ``scaled``, in its shape: 2 (U A - B)."""
        flat = scaled.reshape(self.B.shape)
        curvature = self.lipschitz * flat if self.A is None else flat @ self.A
        return (2.0 * (curvature - self.B)).reshape(scaled.shape)


def quadratic_trace(left: np.ndarray, matrix: np.ndarray, right: np.ndarray) -> float:
    """tr(left @ matrix @ right^T) through BLAS matrix products (einsum would loop naively)."""
    return float(np.sum((left @ matrix) * right))


def check_weights(weights: np.ndarray) -> np.ndarray:
    """Validate a 4-D conv weight (N, C, kh, kw): finite and not all zero."""
    weights = np.asarray(weights)
    if weights.ndim != 4:
        raise ProblemError(f"weights must be 4-D (out, in, kh, kw), got shape {weights.shape}")
    if not np.all(np.isfinite(weights)):
        raise ProblemError("weights contain NaN or infinite values")
    if not np.any(weights):
        raise ProblemError("weights are all zero: nothing to approximate")
    return weights


def check_batch(weights: np.ndarray) -> np.ndarray:
    """Validate P problems' weights (P, N, C, kh, kw), each with ``check_weights``."""
    weights = np.asarray(weights)
    if weights.ndim != 5:
        raise ProblemError(f"weights must be (P, N, C, kh, kw), got shape {weights.shape}")
    for single in weights:
        check_weights(single)
    return weights


def filter_objective(weights: np.ndarray, dtype=jnp.float32) -> Quadratic:
    """||W - W_hat||_F^2 / ||W||_F^2 as a Quadratic."""
    weights = check_weights(weights)
    flat = weights.reshape(weights.shape[0], -1).astype(np.float64)
    norm = float(np.sqrt(np.vdot(flat, flat)))
    return Quadratic(B=jnp.asarray(flat / norm, dtype), A=None, lipschitz=jnp.asarray(1.0, dtype),
                     weight_scale=jnp.asarray(norm, dtype))


def check_moments(moments: Moments, dim: int, outputs: int) -> None:
    """Raise ProblemError unless the moments describe D-dimensional patches of a layer with
    ``outputs`` outputs, are finite and come from at least one patch."""
    shapes = {"mean": (dim,), "mean_hat": (dim,), "second_hat": (dim, dim)}
    if not moments.is_symmetric:
        shapes.update(output_cross=(outputs, dim), output_energy=())
    for field, shape in shapes.items():
        value = np.asarray(getattr(moments, field))
        if value.shape != shape:
            raise ProblemError(
                f"statistics field {field!r} has shape {value.shape}, expected {shape} "
                f"(patch size C*kh*kw = {dim})")
        if not np.all(np.isfinite(value)):
            raise ProblemError(f"statistics field {field!r} contains NaN or infinite values")
    if moments.count < 1:
        raise ProblemError(f"statistics were gathered from {moments.count} patches; need at least 1")


def data_objective(weights: np.ndarray, moments: Moments, ridge: float = 0.0, dtype=jnp.float32) -> Quadratic:
    """Output-matching loss with bias refit (see module docstring) as a Quadratic, plus the
    ridge rho ||W_hat - W||_F^2 toward the original weights, rho = ``ridge`` * tr(Cov(x_hat)) / D
    (``ridge`` times the mean input variance, so one setting means the same for every layer).

    The data term cannot see input directions the statistics do not vary in (duplicated or
    constant channels, fewer patches than dimensions): alone it leaves the weights free there,
    and a solve can return weights far from, and much larger than, the original ones. The
    ridge keeps those directions at the original weights and changes little elsewhere. The
    loss is normalised by its value at W_hat = 0, E||W x - E W x||^2 + rho ||W||^2.
    """
    weights = check_weights(weights)
    flat = weights.reshape(weights.shape[0], -1).astype(np.float64)
    check_moments(moments, flat.shape[1], flat.shape[0])
    if not (np.isfinite(ridge) and ridge >= 0):
        raise ProblemError(f"ridge must be a finite number >= 0, got {ridge}")
    covariance_hat = moments.covariance_hat()
    rho = ridge * float(np.trace(covariance_hat)) / flat.shape[1]
    norm = float(np.sqrt(np.vdot(flat, flat)))
    scale = moments.output_variance(flat) + rho * norm * norm
    if not scale > 0:
        raise ProblemError("the layer's outputs do not vary on these statistics (output variance 0)")
    a_matrix = (covariance_hat + rho * np.eye(flat.shape[1])) * (norm * norm / scale)
    top = float(np.linalg.eigvalsh(a_matrix)[-1])
    b_matrix = (moments.output_covariance(flat) + rho * flat) * (norm / scale)
    return Quadratic(B=jnp.asarray(b_matrix, dtype), A=jnp.asarray(a_matrix, dtype),
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
    err = (moments.output_second(flat)
           - 2 * float(np.vdot(moments.output_moment(flat), flat_hat))
           + quadratic_trace(flat_hat, moments.second_hat, flat_hat)
           + 2 * delta @ (flat @ moments.mean - flat_hat @ moments.mean_hat) + delta @ delta)
    return float(err / moments.output_variance(flat))


def stack_quadratics(quads: list[Quadratic]) -> Quadratic:
    """One Quadratic with a leading batch axis from several of equal shapes and kind."""
    if len({q.A is None for q in quads}) != 1:
        raise ProblemError("cannot batch filter- and data-reconstruction problems together")
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *quads)
