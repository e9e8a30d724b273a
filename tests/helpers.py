"""Torch-free test helpers: the tests of ``solvers/`` import these, and must run with torch not installed."""
from __future__ import annotations

import numpy as np


def decaying_weights(shape, seed=0, decay=0.7) -> np.ndarray:
    """Random conv weights whose (C*kh) x (N*kw) spectrum decays geometrically."""
    n, c, kh, kw = shape
    rng = np.random.default_rng(seed)
    rows, cols = c * kh, n * kw
    u, _ = np.linalg.qr(rng.standard_normal((rows, rows)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, cols)))
    k = min(rows, cols)
    matrix = (u[:, :k] * decay ** np.arange(k)) @ v[:, :k].T
    return matrix.reshape(c, kh, n, kw).transpose(2, 0, 1, 3).astype(np.float32)
