"""Scheme 1 of Jaderberg et al. (2014): every filter slice is a combination of M shared
separable bases, fitted by proximal gradient with a nuclear-norm lambda schedule
(``solvers.scheme1``), to the weights or to the layer's outputs."""
from __future__ import annotations

from typing import Any

import numpy as np

from recon.methods.base import Fitted, Method, SolverOptions, check_schedule
from recon.nn import ConvGeometry, Scheme1Conv
from solvers import scheme1
from solvers.objectives import Moments, data_objective, filter_objective, stack_quadratics
from solvers.schedule import LambdaSchedule


class Scheme1(Method):
    name = "scheme1"
    summary = "Jaderberg Scheme 1: M shared separable bases and a 1x1 mix; filter or data mode"
    module_class = Scheme1Conv
    fits_data = True

    def __init__(self, schedule: LambdaSchedule = LambdaSchedule()) -> None:
        check_schedule(schedule)
        self.schedule = schedule

    def settings(self) -> dict[str, Any]:
        """``schedule``: the lambda schedule of the proximal-gradient solver (relative units)."""
        return {"schedule": self.schedule._asdict()}

    def replaced(self, **settings: Any) -> Method:
        if isinstance(settings.get("schedule"), dict):  # as settings() and a stored config give it
            settings["schedule"] = LambdaSchedule(**settings["schedule"])
        return super().replaced(**settings)

    def max_rank(self, geometry: ConvGeometry) -> int:
        return scheme1.max_bases(geometry.weight_shape)

    def rank_hint(self, geometry: ConvGeometry) -> str:
        return f"M <= kh*kw = {self.max_rank(geometry)}: more bases than kernel entries cannot help"

    def fit(self, weights: np.ndarray, rank: int, moments: Moments | None, options: SolverOptions,
            groups: int = 1) -> Fitted:
        return self.fit_many([(weights, moments)], rank, options)[0]

    def batch_key(self, geometry: ConvGeometry, rank: int, data_mode: bool) -> tuple:
        """Filter mode batches layers with the same N, kernel and M, zero-padding their input
        channels to the most among them (exact: zero weights keep zero coefficients, and the
        bases see the same problem); data mode batches equal shapes."""
        if data_mode:
            return super().batch_key(geometry, rank, data_mode)
        return (geometry.out_channels, geometry.kernel_size, rank)

    def fit_many(self, problems: list[tuple[np.ndarray, Moments | None]], rank: int, options: SolverOptions,
                 groups: int = 1) -> list[Fitted]:
        """Layers sharing a ``batch_key`` as one batch of the solver."""
        channels = max(w.shape[1] for w, _ in problems)
        weights = np.stack([np.pad(w, ((0, 0), (0, channels - w.shape[1]), (0, 0), (0, 0))) for w, _ in problems])
        quads = stack_quadratics([filter_objective(w) if m is None else data_objective(w, m, options.ridge)
                                  for w, (_, m) in zip(weights, problems)])
        result = scheme1.fit_batch(weights.astype(np.float32), quads, rank, self.schedule)
        fitted = []
        for index in range(len(problems)):
            ran = [s for s in result.stages if s.steps[index] > 0]
            history = {"lambda": np.array([s.lam[index] for s in ran]),
                       "objective": np.array([s.objective[index] for s in ran]),
                       "rank_ratio": np.array([s.max_rank_ratio[index] for s in ran])}
            coeffs = result.coeffs[index, :, : problems[index][0].shape[1]]
            fitted.append(Fitted({"vertical": result.vertical[index], "horizontal": result.horizontal[index],
                                  "coeffs": coeffs}, rank, history))
        return fitted

    def quick_fit(self, weights: np.ndarray, rank: int, groups: int = 1) -> Fitted:
        """The lambda = 0 start without the schedule: the top M right singular vectors of W as
        (N*C) x (kh*kw), each cut to its best separable filter, coefficients by projection (with
        fewer than M rows, N*C < M, the complement of the row space completes the M)."""
        n, c, kh, kw = weights.shape
        _, _, vt = np.linalg.svd(weights.reshape(n * c, kh * kw), full_matrices=True)
        u, s, wt = np.linalg.svd(vt[:rank].reshape(rank, kh, kw))
        vertical, horizontal = u[:, :, 0] * np.sqrt(s[:, :1]), wt[:, 0, :] * np.sqrt(s[:, :1])
        bases = np.einsum("my,mx->myx", vertical, horizontal).reshape(rank, -1)
        coeffs = np.linalg.lstsq(bases.T, weights.reshape(n * c, -1).T, rcond=None)[0].T.reshape(n, c, rank)
        return Fitted({"vertical": vertical, "horizontal": horizontal, "coeffs": coeffs}, rank, {})

    def rank_errors(self, weights: np.ndarray, covariance: np.ndarray | None, groups: int = 1) -> np.ndarray:
        """The weight error of the best M unconstrained (not yet separable) bases, Eckart-Young
        on W reshaped to (N*C) x (kh*kw): a lower bound used as the estimate in either mode."""
        n, c, kh, kw = weights.shape
        energy = np.linalg.svd(weights.reshape(n * c, kh * kw), compute_uv=False) ** 2
        tail = np.cumsum(energy[::-1])[::-1]
        errors = np.zeros(kh * kw)
        errors[: len(tail) - 1] = tail[1:] / tail[0]
        return errors
