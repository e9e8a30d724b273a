"""How much a layer's input statistics can tell the data objective (pure NumPy).

A data fit sees the weights only through the input covariance: directions in which the inputs
never vary (duplicated or constant channels, fewer patches than dimensions) are invisible to
it, and ill-conditioned statistics make float32 solves inexact. These numbers say so before
anyone trusts the fit.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

UNSEEN = 1e-10  # eigenvalues below this fraction of the largest count as directions never seen


class Conditioning(NamedTuple):
    """patches: how many patches the statistics come from; dim: D; effective_rank: exp of the
    entropy of the normalised eigenvalues (D for white inputs, 1 for one direction);
    condition: largest / smallest eigenvalue (inf when the smallest is not positive);
    unseen: eigenvalues below UNSEEN times the largest."""

    patches: int
    dim: int
    effective_rank: float
    condition: float
    unseen: int

    @property
    def patches_per_dim(self) -> float:
        return self.patches / self.dim


def conditioning(covariance: np.ndarray, patches: int) -> Conditioning:
    """The conditioning of a D x D input covariance estimated from ``patches`` patches."""
    eigenvalues = np.clip(np.linalg.eigvalsh(np.asarray(covariance, np.float64)), 0.0, None)
    top = float(eigenvalues[-1])
    if top <= 0:
        return Conditioning(patches, len(eigenvalues), 0.0, float("inf"), len(eigenvalues))
    weights = eigenvalues / eigenvalues.sum()
    entropy = -float(np.sum(weights[weights > 0] * np.log(weights[weights > 0])))
    smallest = float(eigenvalues[0])
    return Conditioning(patches, len(eigenvalues), float(np.exp(entropy)),
                        top / smallest if smallest > 0 else float("inf"), int(np.sum(eigenvalues < UNSEEN * top)))
