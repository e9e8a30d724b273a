"""JAX/Optax solvers vs the CVXPY reference, and solver speed on the bundled model.

    python -m benchmarks.solver_vs_cvxpy [--cvxpy-limit 600] [--quick]

1. Scheme 1, filter reconstruction, same normalised objective and lambda schedule: the JAX
   solver runs first; CVXPY then runs exactly as many stages (same final lambda). Reports
   wall time (JAX with and without jit compilation), final objective, and relative error
   after the rank-1 cut, on conv2 of fmnist-alexnet and a synthetic layer with a decaying
   spectrum; a VGG-16-sized layer (512x512x3x3) for JAX alone, CVXPY where it finishes.
2. Whole bundled model, filter mode, each scheme, in a fresh process (compilation included).
3. Scheme 2 data reconstruction of conv2 once statistics exist: L-BFGS iterations vs data
   loss (the measurement behind choosing L-BFGS), time with and without compilation.
"""
from __future__ import annotations

import argparse
import multiprocessing
import queue as queue_module
import subprocess
import sys
import time

import numpy as np

from benchmarks.common import machine, markdown_table, write_section
from solvers import reference, scheme1, scheme2
from solvers.objectives import data_objective, filter_objective
from solvers.schedule import LambdaSchedule


def decaying_layer(shape, decay=0.8, seed=0) -> np.ndarray:
    """Weights whose (N*C) x (kh*kw) singular values decay geometrically."""
    n, c, kh, kw = shape
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((n * c, kh * kw)))
    v, _ = np.linalg.qr(rng.standard_normal((kh * kw, kh * kw)))
    return ((u * decay ** np.arange(kh * kw)) @ v.T).reshape(shape).astype(np.float32)


def _reference_worker(queue, weights, num_bases, schedule, limit) -> None:
    queue.put(reference.fit(weights, num_bases, schedule, time_limit=limit))


def run_reference(weights: np.ndarray, num_bases: int, schedule: LambdaSchedule, limit: float):
    """reference.fit in a child process killed after ``limit`` seconds (None if killed)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    worker = context.Process(target=_reference_worker, args=(queue, weights, num_bases, schedule, limit))
    worker.start()
    try:
        return queue.get(timeout=limit + 30)
    except queue_module.Empty:
        return None
    finally:
        worker.kill()
        worker.join()


def jax_vs_cvxpy(name: str, weights: np.ndarray, num_bases: int, cvxpy_limit: float) -> list[object]:
    quad = filter_objective(weights)
    start = time.perf_counter()
    first = scheme1.fit(weights, quad, num_bases)
    with_compile = time.perf_counter() - start
    start = time.perf_counter()
    result = scheme1.fit(weights, quad, num_bases)
    without_compile = time.perf_counter() - start
    stages = len(result.stages)
    jax_objective = float(result.stages[-1].objective[0])
    schedule = LambdaSchedule(max_stages=stages)
    ref = run_reference(weights, num_bases, schedule, cvxpy_limit) if cvxpy_limit > 0 else None
    assert np.allclose(first.fit_error, result.fit_error, atol=1e-5)
    row = [name, "x".join(map(str, weights.shape)), num_bases, stages, f"{with_compile:.2f}", f"{without_compile:.3f}",
           f"{jax_objective:.4f}", f"{float(result.fit_error[0]):.4f}"]
    if cvxpy_limit <= 0:
        return row + ["not run", "", "", ""]
    if ref is None:
        return row + [f"did not finish in {cvxpy_limit:.0f} s", "", "", ""]
    status = "" if ref.finished else f" (stopped at {cvxpy_limit:.0f} s after {ref.stages} stages)"
    return row + [f"{ref.seconds:.1f}{status}", f"{ref.objective:.4f}", f"{ref.truncated_error:.4f}",
                  f"{ref.seconds / without_compile:.0f}x"]


WHOLE_MODEL = """
import time, sys
start = time.perf_counter()
from recon import methods, zoo
from recon.pipeline.select import eligible_layers
from solvers import scheme1, scheme2
from solvers.objectives import filter_objective
model = zoo.load_model("fmnist-alexnet")
scheme = int(sys.argv[1])
for name in eligible_layers(model, methods.get("scheme2")):
    w = model.get_submodule(name).weight.detach().numpy()
    if scheme == 1:
        scheme1.fit(w, filter_objective(w), 4)
    else:
        scheme2.fit(w, max(1, scheme2.max_rank(w.shape) // 4))
print(time.perf_counter() - start)
"""


def whole_model_seconds(scheme: int) -> float:
    out = subprocess.run([sys.executable, "-c", WHOLE_MODEL, str(scheme)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def lbfgs_study(samples: int) -> list[list[object]]:
    from recon import data, observe, zoo

    model = zoo.load_model("fmnist-alexnet")
    moments = observe(model, data.loader("train", batch_size=250, limit=samples), ["conv2"], patches_per_image=32,
                      progress=False)["conv2"]
    weights = model.conv2.weight.detach().numpy()
    quad = data_objective(weights, moments)
    rows = []
    for rank in (8, 48):
        svd = scheme2.fit(weights, rank)
        svd_loss = float(quad.loss(scheme2.compose(svd.vertical, svd.horizontal) / quad.weight_scale))
        rows.append([rank, "SVD (filter optimum)", f"{svd_loss:.4f}", "", ""])
        for iterations in (0, 25, 100, 200, 400):
            first = scheme2.fit(weights, rank, quad, iterations)
            again = scheme2.fit(weights, rank, quad, iterations)
            label = "SVD + closed-form H refit" if iterations == 0 else f"L-BFGS {iterations} it. + H refit"
            rows.append([rank, label, f"{again.loss:.4f}", f"{first.seconds:.2f}", f"{again.seconds:.3f}"])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.solver_vs_cvxpy", description=__doc__.splitlines()[0])
    parser.add_argument("--cvxpy-limit", type=float, default=600, help="seconds before a CVXPY run is stopped")
    parser.add_argument("--quick", action="store_true", help="small sizes only (for a smoke run)")
    args = parser.parse_args(argv)
    from recon import zoo

    conv2 = zoo.load_model("fmnist-alexnet").conv2.weight.detach().numpy()
    cases = [("synthetic", decaying_layer((32, 16, 5, 5)), 4), ("synthetic", decaying_layer((64, 64, 3, 3)), 4),
             ("fmnist conv2", conv2, 4), ("fmnist conv2", conv2, 8)]
    if not args.quick:
        cases += [("VGG-16 size", decaying_layer((512, 512, 3, 3), decay=0.85), 4)]
    rows = []
    for name, weights, bases in cases:
        rows.append(jax_vs_cvxpy(name, weights, bases, args.cvxpy_limit))
        print(rows[-1], flush=True)
    whole = [[scheme, f"{whole_model_seconds(scheme):.1f}"] for scheme in (1, 2)]
    print(whole, flush=True)
    study = lbfgs_study(2000 if args.quick else 4000)
    body = "\n\n".join([
        "## Solvers: JAX/Optax vs CVXPY (`python -m benchmarks.solver_vs_cvxpy`)",
        f"Machine: {machine()}.",
        "Scheme 1 filter reconstruction, same normalised objective, same lambda schedule (CVXPY runs as many "
        "stages as JAX needed, so both end at the same lambda; CVXPY alternates 2 exact block solves per stage: "
        "bases with SCS, coefficients with Clarabel). Objective = relative loss + lambda * sum of nuclear norms at "
        "the last stage; 'cut error' = relative error after the rank-1 cut and coefficient refit.",
        markdown_table(["layer", "shape", "M", "stages", "JAX s (with compile)", "JAX s (compiled)", "JAX objective",
                        "JAX cut error", "CVXPY s", "CVXPY objective", "CVXPY cut error", "time ratio"], rows),
        "Whole bundled model, filter mode, every eligible conv, fresh process (imports and compilation included): "
        "Scheme 1 with M=4; Scheme 2 with K = max/4.",
        markdown_table(["scheme", "seconds"], whole),
        "Scheme 2 data reconstruction of conv2 (statistics gathered beforehand): relative data loss "
        "(output variance not explained) by solver. 'first s' includes compilation.",
        markdown_table(["K", "method", "data loss", "first s", "compiled s"], study),
    ])
    write_section("solvers", body)


if __name__ == "__main__":
    main()
