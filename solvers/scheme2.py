"""Scheme 2 of Jaderberg et al. (2014): K vertical (kh x 1) filters over all C input
channels, then N horizontal (1 x kw) filters over those K maps.

W_hat[n, c, y, x] = sum_k H[n, k, x] V[k, c, y].

Filter reconstruction has a closed form: reshaped as the (C*kh) x (N*kw) matrix
M[(c, y), (n, x)] = W[n, c, y, x], W_hat is exactly a rank-K matrix, so the truncated SVD of
M is optimal (Eckart-Young), with sqrt(sigma) split between V and H.
Data reconstruction minimises the data loss over (V, H) with Optax L-BFGS, then refits H in
closed form (the loss is quadratic in H for fixed V). The input covariance A of a conv's
patches couples (c, y) with x and is badly conditioned, which slows L-BFGS on the raw factors
(still improving after 200 iterations on real layers). Its nearest separable form
A ~ A_rows (x) A_cols (partial traces over x and over (c, y)) whitens both factors at once:
with A_rows = Lr Lr^T and A_cols = Lc Lc^T, L-BFGS runs on V Lr and H Lc, and for a separable A
the truncated SVD of Lr^T M* (I (x) Lc) (M* the unconstrained optimum in the matrix layout
above) is the exact optimum. From the better of that start and the plain SVD, L-BFGS reaches
in 64 iterations a lower loss than the raw factors reached in 200 (fmnist-alexnet's conv2,
conv4 and conv5 on 1,000 images: 0.00933/0.00626/0.00146 against 0.00936/0.00627/0.00148).
"""
from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from solvers.errors import DivergenceError, ProblemError
from solvers.linear import RIDGE, solve_shared_design
from solvers.objectives import Quadratic, check_batch, stack_quadratics
from solvers.parallel import shard_leading_axis


class Scheme2Factors(NamedTuple):
    """vertical (K, C, kh) and horizontal (N, K, kw) filters, in the units of the weights."""

    vertical: jax.Array
    horizontal: jax.Array


def max_rank(shape: tuple[int, ...]) -> int:
    """The largest useful K for weights of ``shape`` (N, C, kh, kw): min(C*kh, N*kw)."""
    n, c, kh, kw = shape
    return min(c * kh, n * kw)


def check_rank(shape: tuple[int, ...], rank: int) -> None:
    """Raise ValueError unless 1 <= rank <= max_rank(shape)."""
    top = max_rank(shape)
    if not 1 <= rank <= top:
        raise ProblemError(
            f"Scheme 2 needs 1 <= K <= min(C*kh, N*kw) = {top} for weights of shape {tuple(shape)}, "
            f"got K={rank}")


def compose(vertical: jax.Array, horizontal: jax.Array) -> jax.Array:
    """W_hat (N, C, kh, kw) from vertical (K, C, kh) and horizontal (N, K, kw)."""
    return jnp.einsum("nkx,kcy->ncyx", horizontal, vertical)


def filter_fit(weights: jax.Array | np.ndarray, rank: int) -> Scheme2Factors:
    """Optimal rank-K Scheme 2 factors of ``weights`` under ||W - W_hat||_F (truncated SVD);
    JAX or NumPy arrays in, the same kind out."""
    linalg = np.linalg if isinstance(weights, np.ndarray) else jnp.linalg
    return _split_svd(*linalg.svd(_matrix(weights), full_matrices=False), rank, weights.shape)


def _matrix(weights):
    """The (..., C*kh, N*kw) layout of weights (..., N, C, kh, kw), M[(c, y), (n, x)] = W[n, c, y, x]."""
    *batch, n, c, kh, kw = weights.shape
    axes = tuple(range(len(batch)))
    return weights.transpose(*axes, *(a + len(batch) for a in (1, 2, 0, 3))).reshape(*batch, c * kh, n * kw)


def _split_svd(u, s, vt, rank: int, shape: tuple[int, ...]) -> Scheme2Factors:
    """Factors of the rank-K truncation of one SVD of ``_matrix``, sqrt(sigma) on each side."""
    n, c, kh, kw = shape
    root = (s[:rank]) ** 0.5
    vertical = (u[:, :rank] * root).T.reshape(rank, c, kh)
    horizontal = (root[:, None] * vt[:rank]).reshape(rank, n, kw).transpose(1, 0, 2)
    return Scheme2Factors(vertical, horizontal)


_batched_svd = jax.jit(lambda matrices: jnp.linalg.svd(matrices, full_matrices=False))


def _filter_batch(weights: jax.Array, rank: int) -> tuple[Scheme2Factors, np.ndarray]:
    """Truncated SVDs of P layers (P, N, C, kh, kw) and their relative errors: one compiled SVD
    per shape, truncated to ``rank`` afterwards in NumPy (ranks do not cost compilations)."""
    u, s, vt = map(np.asarray, _batched_svd(shard_leading_axis(_matrix(weights))))
    each = [_split_svd(*svd, rank, weights.shape[1:]) for svd in zip(u, s, vt)]
    energy = np.asarray(s, np.float64) ** 2
    loss = energy[:, rank:].sum(axis=1) / np.maximum(energy.sum(axis=1), np.finfo(np.float64).tiny)
    return Scheme2Factors(*(np.stack(parts) for parts in zip(*each))), loss


def refit_horizontal(quad: Quadratic, vertical: jax.Array, num_outputs: int, kw: int,
                     keep: jax.Array | None = None) -> jax.Array:
    """H (N, K, kw) minimising the loss for fixed scaled V (K, C, kh), in closed form; with
    ``keep`` (K,), a 0/1 mask of the filters in use, the others' rows of V are zero and so
    are their H (the ridge is relative to the used columns' mean diagonal, as without them)."""
    k, c, kh = vertical.shape
    # design[(c, y, x), (k, x')] = V[k, c, y] * [x == x']
    design = jnp.einsum("kcy,xz->cyxkz", vertical, jnp.eye(kw, dtype=vertical.dtype))
    used = None if keep is None else jnp.sum(keep) * kw
    theta = solve_shared_design(quad, design.reshape(c * kh * kw, k * kw), used)
    return theta.reshape(num_outputs, k, kw)


ITERATIONS = 64  # L-BFGS iterations of a data fit (see the module docstring)
JITTER = 1e-6  # relative to the mean diagonal: keeps the whitening of a singular covariance defined


def _jittered_cholesky(matrix: np.ndarray) -> np.ndarray:
    size = len(matrix)
    return np.linalg.cholesky(matrix + JITTER * np.trace(matrix) / size * np.eye(size))


def _numpy_loss(a_matrix: np.ndarray, b_matrix: np.ndarray, scaled: np.ndarray) -> float:
    """``Quadratic.loss`` in float64 NumPy."""
    flat = scaled.reshape(b_matrix.shape)
    return float(1.0 - 2.0 * np.vdot(flat, b_matrix) + np.vdot(flat @ a_matrix, flat))


class Whitening(NamedTuple):
    """Lower Cholesky factors of the separable approximation A ~ A_rows (x) A_cols of a
    (C*kh*kw)^2 covariance, ``rows`` (C*kh, C*kh) over (c, y) and ``columns`` (kw, kw) over x,
    with their inverses (formed once: every L-BFGS step maps whitened factors back). Made in
    float64 NumPy before the solve, so the compiled solve holds matrix products only."""

    rows: np.ndarray
    columns: np.ndarray
    rows_inverse: np.ndarray
    columns_inverse: np.ndarray

    @classmethod
    def of(cls, a_matrix: np.ndarray, kw: int) -> "Whitening":
        """The partial traces of ``a_matrix`` over x and over (c, y), factorised."""
        rows = len(a_matrix) // kw
        blocks = np.asarray(a_matrix, np.float64).reshape(rows, kw, rows, kw)
        a_rows = np.einsum("pxqx->pq", blocks) / kw
        a_cols = np.einsum("pxpz->xz", blocks) / np.trace(a_rows)
        factors = [_jittered_cholesky(a_rows), _jittered_cholesky(a_cols)]
        return cls(*factors, *(np.linalg.inv(lower) for lower in factors))

    def whiten(self, factors: Scheme2Factors) -> Scheme2Factors:
        """(V Lr, H Lc): factors in the whitened coordinates."""
        return self._map(factors, self.rows, self.columns)

    def unwhiten(self, factors: Scheme2Factors) -> Scheme2Factors:
        """(V Lr^-1, H Lc^-1): the factors of the weights from whitened ones."""
        return self._map(factors, self.rows_inverse, self.columns_inverse)

    @staticmethod
    def _map(factors: Scheme2Factors, rows, columns) -> Scheme2Factors:
        k, c, kh = factors.vertical.shape
        vertical = (factors.vertical.reshape(k, c * kh) @ rows).reshape(k, c, kh)
        n, _, kw = factors.horizontal.shape
        return Scheme2Factors(vertical, (factors.horizontal.reshape(n * k, kw) @ columns).reshape(n, k, kw))

    def optimum_start(self, a_matrix: np.ndarray, b_matrix: np.ndarray, rank: int,
                      shape: tuple[int, ...]) -> Scheme2Factors:
        """Whitened factors of the rank-K truncated SVD of Lr^T M* (I (x) Lc), M* = B A^-1 in
        the (C*kh) x (N*kw) layout: the exact optimum when A is separable."""
        lower = _jittered_cholesky(a_matrix)
        optimum = np.linalg.solve(lower.T, np.linalg.solve(lower, b_matrix.T)).T  # B A^-1, (N, D)
        n, c, kh, kw = shape
        rows = c * kh
        matrix = np.einsum("pq,npx,xz->qnz", self.rows, optimum.reshape(n, rows, kw), self.columns, optimize=True)
        u, s, vt = np.linalg.svd(matrix.reshape(rows, n * kw), full_matrices=False)
        root = np.sqrt(s[:rank])
        vertical = (u[:, :rank] * root).T
        horizontal = (root[:, None] * vt[:rank]).reshape(rank, n, kw).transpose(1, 0, 2)
        return Scheme2Factors(vertical.reshape(rank, c, kh), horizontal)


class Prepared(NamedTuple):
    """What a data fit starts from: the whitening and the whitened start, in the solve's dtype."""

    whitening: Whitening
    start: Scheme2Factors


def prepare(weights: np.ndarray, quad: Quadratic, rank: int) -> Prepared:
    """The whitening of ``quad``'s A and the better (lower loss) of two whitened starts: the
    weights' truncated SVD and the whitened optimum (float64 NumPy)."""
    a_matrix, b_matrix = np.asarray(quad.A, np.float64), np.asarray(quad.B, np.float64)
    scaled = np.asarray(weights, np.float64) / float(quad.weight_scale)
    whitening = Whitening.of(a_matrix, weights.shape[3])
    plain = whitening.whiten(Scheme2Factors(*map(np.asarray, filter_fit(scaled, rank))))
    starts = [plain, whitening.optimum_start(a_matrix, b_matrix, rank, weights.shape)]
    losses = [_numpy_loss(a_matrix, b_matrix, np.einsum("nkx,kcy->ncyx", *reversed(whitening.unwhiten(start))))
              for start in starts]
    start = starts[1] if np.isfinite(losses[1]) and losses[1] < losses[0] else starts[0]
    cast = lambda values: jax.tree_util.tree_map(lambda value: jnp.asarray(value, quad.B.dtype), values)
    return Prepared(cast(whitening), cast(start))


def data_fit(weights: jax.Array, quad: Quadratic, rank: int, iterations: int = ITERATIONS,
             prepared: Prepared | None = None, keep: jax.Array | None = None) -> Scheme2Factors:
    """Scheme 2 factors minimising ``quad`` (e.g. the data loss): L-BFGS in whitened coordinates
    from ``prepared`` (``prepare``'s, made here when None: pass it under ``jit``), then the H
    refit. With ``keep`` (K,), a 0/1 mask, a start whose filters at its zeros are zero: the
    gradient there is zero, so they stay zero and the fit is the lower rank's (``fit_batch``
    solves every rank of a shape in K = max_rank slots, one compiled program)."""
    n, kw = weights.shape[0], weights.shape[3]
    scale = quad.weight_scale
    whitening, start = prepare(np.asarray(weights), quad, rank) if prepared is None else prepared
    loss = lambda factors: quad.loss(compose(*whitening.unwhiten(factors)))
    optimizer = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(_, carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = optimizer.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state

    params, _ = jax.lax.fori_loop(0, iterations, step, (start, optimizer.init(start)))
    vertical = whitening.unwhiten(params).vertical
    horizontal = refit_horizontal(quad, vertical, n, kw, keep)
    return Scheme2Factors(vertical * jnp.sqrt(scale), horizontal * jnp.sqrt(scale))


def truncation_data_errors(weights: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """Data error tr(E Cov E^T) / tr(W Cov W^T) of the rank-K truncated SVD, for every K.

    Entry K-1 is for rank K (the last is 0). With the SVD terms R_k = u_k v_k^T of the
    (C*kh) x (N*kw) reshaping, E_K = sum_{k>=K} sigma_k R_k, so the error is
    sum_{k,l>=K} sigma_k sigma_l G_kl with G_kl = tr(R_k Cov R_l^T); G factorises over the
    kernel columns x, x' and costs about r * D^2 for all K together (NumPy, float64).
    ``covariance`` is the centred input covariance (the bias is refitted).
    """
    n, c, kh, kw = weights.shape
    matrix = np.asarray(weights, np.float64).transpose(1, 2, 0, 3).reshape(c * kh, n * kw)
    u, sigma, vt = np.linalg.svd(matrix, full_matrices=False)
    rank, rows = len(sigma), c * kh
    cov = np.asarray(covariance, np.float64).reshape(rows, kw, rows, kw)
    # left[k, x, p', x'] = sum_p u[p, k] Cov[p, x, p', x'];  rows_term[k, l, x, x'] = left . u_l
    left = np.tensordot(u.T, cov, axes=(1, 0))
    rows_term = np.einsum("kxpz,pl->klxz", left, u, optimize=True)
    v = vt.reshape(rank, n, kw)
    cols_term = np.einsum("knx,lnz->klxz", v, v, optimize=True)
    gram = np.einsum("klxz,klxz->kl", rows_term, cols_term, optimize=True) * np.outer(sigma, sigma)
    # tail[K] = sum of gram[K:, K:], by reverse accumulation
    tail = np.zeros(rank + 1)
    for k in range(rank - 1, -1, -1):
        tail[k] = tail[k + 1] + gram[k, k] + 2 * gram[k, k + 1:].sum()
    return np.maximum(tail[1:], 0.0) / tail[0]


def reduced_rank_fit(weights: jax.Array, quad: Quadratic, rank: int, keep: jax.Array | None = None) -> Scheme2Factors:
    """The exact minimiser of ``quad`` over rank-K weights (N, D) of a 1x1 kernel (reduced-rank
    regression): with A = L L^T, loss = ||U L - B L^-T||^2 + const, so U L is the rank-K
    truncated SVD of B L^-T. A tiny ridge keeps the Cholesky factor of a singular A defined.
    ``keep`` (K,): a 0/1 mask; the factors of its zeros are zero (a lower rank in K slots)."""
    n, c = weights.shape[:2]
    scale = quad.weight_scale
    a_matrix = quad.lipschitz * jnp.eye(c, dtype=quad.B.dtype) if quad.A is None else quad.A
    a_matrix = a_matrix + RIDGE * jnp.trace(a_matrix) / c * jnp.eye(c, dtype=a_matrix.dtype)
    lower = jnp.linalg.cholesky(a_matrix)
    target = jax.scipy.linalg.solve_triangular(lower, quad.B.T, lower=True).T  # B L^-T
    u, s, vt = jnp.linalg.svd(target, full_matrices=False)
    root = jnp.sqrt(s[:rank]) * (1 if keep is None else keep)
    vertical = jax.scipy.linalg.solve_triangular(lower.T, (root[:, None] * vt[:rank]).T, lower=False).T  # V L^-1
    horizontal = u[:, :rank] * root
    return Scheme2Factors((vertical * jnp.sqrt(scale)).reshape(rank, c, 1),
                          (horizontal * jnp.sqrt(scale)).reshape(n, rank, 1))


class Scheme2Result(NamedTuple):
    """Fitted factors (vertical (P, K, C, kh), horizontal (P, N, K, kw); without P from
    ``fit``), the relative loss each problem reaches, and the wall time of the solve."""

    vertical: np.ndarray
    horizontal: np.ndarray
    loss: np.ndarray
    seconds: float


def _solve(weights: jax.Array, quad: Quadratic, keep: jax.Array, iterations: int,
           prepared: Prepared | None) -> tuple[Scheme2Factors, jax.Array]:
    """One data problem in ``len(keep)`` filter slots, those of keep's zeros unused: the closed
    form (1x1) or whitened L-BFGS from ``prepared``."""
    slots = keep.shape[0]
    pointwise = weights.shape[2] == weights.shape[3] == 1
    factors = (reduced_rank_fit(weights, quad, slots, keep) if pointwise
               else data_fit(weights, quad, slots, iterations, prepared, keep))
    return factors, quad.loss(compose(*factors) / quad.weight_scale)


_batched_solve = jax.jit(jax.vmap(_solve, in_axes=(0, 0, None, None, 0)), static_argnums=(3,))


def _padded_start(start: Scheme2Factors, slots: int) -> Scheme2Factors:
    """``start`` with zero filters appended up to ``slots``."""
    extra = slots - start.vertical.shape[0]
    return Scheme2Factors(np.pad(start.vertical, ((0, extra), (0, 0), (0, 0))),
                          np.pad(start.horizontal, ((0, 0), (0, extra), (0, 0))))


def _power_of_two(count: int) -> int:
    """The smallest power of two >= ``count``."""
    return 1 << (count - 1).bit_length()


SLOT_BUDGET = 1e10  # multiply-adds a solve may spend on unused filter slots: ~0.3 s on 2 cores, a tenth of a compilation


def filter_slots(shape: tuple[int, ...], rank: int, iterations: int) -> int:
    """How many filter slots a data fit of ``rank`` is solved in: max_rank, so that every rank of
    the shape shares one compiled program, where composing max_rank filters in every loss and
    gradient evaluation (about three per L-BFGS iteration) stays within ``SLOT_BUDGET``
    (1x1 kernels: always, their closed form costs the same at any rank); else ``rank`` rounded
    up to a power of two (a large layer, whose solve outweighs a compilation)."""
    n, c, kh, kw = shape
    top = max_rank(shape)
    padded_cost = 3 * 4 * iterations * n * top * c * kh * kw
    return top if kh == kw == 1 or padded_cost <= SLOT_BUDGET else min(top, _power_of_two(rank))


def _prepare_batch(weights: np.ndarray, quads: Quadratic, rank: int, slots: int) -> Prepared | None:
    """``prepare`` of every problem, the start padded to ``slots`` filters, stacked (None for
    1x1 kernels: their fit is closed-form)."""
    if weights.shape[3] == weights.shape[4] == 1:
        return None
    each = []
    for index, w in enumerate(weights):
        whitening, start = prepare(w, jax.tree_util.tree_map(lambda field: field[index], quads), rank)
        each.append(Prepared(whitening, _padded_start(start, slots)))
    return jax.tree_util.tree_map(lambda *values: jnp.stack(values), *each)


def fit_batch(weights: np.ndarray, rank: int, quads: Quadratic | None = None,
              iterations: int = ITERATIONS) -> Scheme2Result:
    """Fit Scheme 2 to P problems of equal shape at once (``vmap``; the batch is sharded over
    every JAX device): closed forms when ``quads`` is None (filter mode) or for 1x1 kernels,
    else data reconstruction by L-BFGS. ``quads`` carry a leading batch axis P
    (``stack_quadratics``). Compilation, not solving, dominated data fits of small layers
    (about 3.5 s per program on 2 cores against 0.1 s per solve), so one compiled program
    serves every rank of a small shape (``filter_slots``: K = max_rank filter slots, the
    unused ones zero) and every P up to a power of two; filter fits compile one SVD per shape.

    Raises ProblemError for bad weights or K, DivergenceError if the solve goes non-finite.
    """
    weights = check_batch(weights)
    check_rank(weights.shape[1:], rank)
    start = time.perf_counter()
    dtype = jnp.float32 if quads is None else quads.B.dtype
    w = jnp.asarray(weights, dtype)
    if quads is None:
        factors, loss = _filter_batch(w, rank)
    else:
        count, slots = len(weights), filter_slots(weights.shape[1:], rank, iterations)
        repeat = np.minimum(np.arange(_power_of_two(count)), count - 1)
        padded = lambda tree: jax.tree_util.tree_map(lambda value: value[repeat], tree)
        prepared = _prepare_batch(weights, quads, rank, slots)
        keep = jnp.asarray(np.arange(slots) < rank, dtype)
        factors, loss = _batched_solve(*shard_leading_axis(padded((w, quads))), keep, iterations,
                                       None if prepared is None else shard_leading_axis(padded(prepared)))
        factors = Scheme2Factors(factors.vertical[:count, :rank], factors.horizontal[:count, :, :rank])
        loss = loss[:count]
    factors, loss = jax.block_until_ready((factors, loss))
    vertical, horizontal = np.asarray(factors.vertical), np.asarray(factors.horizontal)
    if not (np.all(np.isfinite(vertical)) and np.all(np.isfinite(horizontal))):
        raise DivergenceError(
            f"Scheme 2 {'filter' if quads is None else 'data'} fit produced non-finite factors "
            f"(K={rank}, weights {weights.shape[1:]}); try a ridge, float64 or fewer L-BFGS iterations")
    return Scheme2Result(vertical, horizontal, np.asarray(loss, np.float64), time.perf_counter() - start)


def fit(weights: np.ndarray, rank: int, quad: Quadratic | None = None, iterations: int = ITERATIONS) -> Scheme2Result:
    """Fit Scheme 2 to one layer: ``fit_batch`` with one problem, the batch axis removed."""
    quads = None if quad is None else stack_quadratics([quad])
    result = fit_batch(np.asarray(weights)[None], rank, quads, iterations)
    return Scheme2Result(result.vertical[0], result.horizontal[0], result.loss[0], result.seconds)
