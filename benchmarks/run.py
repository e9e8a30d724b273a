"""Run every CPU benchmark in turn (``make bench``); each writes its section of RESULTS.md."""
from __future__ import annotations

from benchmarks import forward_variants, inference_speed, solver_devices, solver_vs_cvxpy


def main() -> None:
    solver_vs_cvxpy.main([])
    solver_devices.main()
    forward_variants.main([])
    inference_speed.main([])


if __name__ == "__main__":
    main()
