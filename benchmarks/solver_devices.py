"""Solver wall time on whatever JAX backend is present (CPU here, GPU on a lent machine).

    python -m benchmarks.solver_devices

VGG-16-sized problems: Scheme 1 filter fits of one and of a vmapped batch of 8
(512x512x3x3, M=4), Scheme 2 data fits (512x512x3x3, patch dimension 4608, K=128) from
synthetic statistics. Times with compilation (first call) and without (second call).
"""
from __future__ import annotations

import time

import jax
import numpy as np

from benchmarks.common import machine, markdown_table, write_section
from benchmarks.solver_vs_cvxpy import decaying_layer
from solvers import scheme1, scheme2
from solvers.objectives import Moments, data_objective, filter_objective


def twice(function) -> tuple[float, float, object]:
    start = time.perf_counter()
    function()
    first = time.perf_counter() - start
    start = time.perf_counter()
    result = function()
    return first, time.perf_counter() - start, result


def synthetic_moments(dim: int, seed: int = 0) -> Moments:
    rng = np.random.default_rng(seed)
    x = np.abs(rng.standard_normal((4 * dim, dim))) @ (np.eye(dim) + 0.05 * rng.standard_normal((dim, dim)))
    return Moments.symmetric(len(x), x.mean(0), x.T @ x / len(x))


def main() -> None:
    rows = []
    weights = decaying_layer((512, 512, 3, 3), decay=0.85)
    first, again, result = twice(lambda: scheme1.fit(weights, filter_objective(weights), 4))
    rows.append(["Scheme 1 filter, 1 layer 512x512x3x3, M=4", f"{first:.2f}", f"{again:.2f}",
                 f"{float(result.fit_error[0]):.4f}"])
    batch = np.stack([decaying_layer((512, 512, 3, 3), decay=0.85, seed=s) for s in range(8)])
    quads = scheme1.stack_quadratics([filter_objective(w) for w in batch])
    first, again, result = twice(lambda: scheme1.fit_batch(batch, quads, 4))
    rows.append(["Scheme 1 filter, vmapped batch of 8 such layers", f"{first:.2f}", f"{again:.2f}",
                 f"{float(result.fit_error.mean()):.4f} (mean)"])
    quad = data_objective(weights, synthetic_moments(512 * 9))
    first, again, result = twice(lambda: scheme2.fit(weights, 128, quad))
    rows.append(["Scheme 2 data, 512x512x3x3, K=128, D=4608", f"{first:.2f}", f"{again:.2f}", f"{result.loss:.4f}"])
    for row in rows:
        print(row, flush=True)
    backend = jax.default_backend()
    body = "\n\n".join([
        f"## Solver time on JAX {backend} (`python -m benchmarks.solver_devices`)",
        f"Machine: {machine()}; JAX devices: {jax.devices()}.",
        markdown_table(["problem", "s (with compile)", "s (compiled)", "relative loss"], rows),
    ])
    write_section(f"solver-devices-{backend}", body)


if __name__ == "__main__":
    main()
