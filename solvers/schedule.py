"""The lambda continuation schedule of the Scheme 1 solver.

lambda grows geometrically from ``lambda_min`` by ``growth`` per stage, capped at
``lambda_max``; each stage runs proximal-gradient steps warm started from the previous stage
until the objective changes by less than ``tolerance`` (relative) from one step to the next,
at most ``steps_per_stage``, and the schedule ends once every basis is numerically rank 1
(sigma_2/sigma_1 < ``rank_tol``). lambda is relative: objectives are normalised so that the
loss of the zero approximation is 1.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import optax

from solvers.errors import ProblemError


class LambdaSchedule(NamedTuple):
    """Continuation schedule; the defaults fit the bundled model's layers."""

    lambda_min: float = 1e-3
    lambda_max: float = 1.0
    growth: float = 1.6
    max_stages: int = 20
    steps_per_stage: int = 50
    rank_tol: float = 1e-3
    tolerance: float = 1e-5

    def validate(self) -> "LambdaSchedule":
        """Return self, or raise ProblemError naming the first setting out of range."""
        if not (np.isfinite(self.lambda_min) and self.lambda_min > 0):
            raise ProblemError(f"lambda_min must be a finite number > 0, got {self.lambda_min}")
        if not (np.isfinite(self.lambda_max) and self.lambda_max >= self.lambda_min):
            raise ProblemError(
                f"lambda_max must be >= lambda_min ({self.lambda_min}), got {self.lambda_max}: "
                "the schedule only grows")
        if not self.growth > 1:
            raise ProblemError(f"growth must be > 1 (lambda grows each stage), got {self.growth}")
        if self.max_stages < 1 or self.steps_per_stage < 1:
            raise ProblemError(
                f"max_stages and steps_per_stage must be >= 1, got {self.max_stages} and {self.steps_per_stage}")
        if not 0 < self.rank_tol < 1:
            raise ProblemError(f"rank_tol must lie in (0, 1), got {self.rank_tol}")
        if not (np.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ProblemError(f"tolerance must be a finite number >= 0, got {self.tolerance}")
        return self

    def values(self) -> np.ndarray:
        """The lambda of each stage: a geometric grid from lambda_min, capped at lambda_max."""
        self.validate()
        grid = optax.exponential_decay(
            init_value=self.lambda_min, transition_steps=1, decay_rate=self.growth,
            end_value=self.lambda_max)
        values = np.array([float(grid(k)) for k in range(self.max_stages)])
        last = int(np.argmax(values >= self.lambda_max)) if values[-1] >= self.lambda_max else len(values) - 1
        return values[: last + 1]
