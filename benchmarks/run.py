"""Run every CPU benchmark in turn (``make bench``, about 1.5 hours on 2 cores); each writes
its section of RESULTS.md."""
from __future__ import annotations

from benchmarks import (accuracy, accuracy_vs_speedup, degenerate, forward_variants, guard, inference_speed,
                        resnet56_fit, solver_devices, solver_vs_cvxpy, statistics, target_speedup)


def main() -> None:
    solver_vs_cvxpy.main([])
    solver_devices.main()
    forward_variants.main([])
    inference_speed.main([])
    accuracy.main([])
    target_speedup.main([])
    target_speedup.main(["--model", "fmnist-resnet", "--target", "2", "--layouts", "channels_last"])
    guard.main([])
    accuracy_vs_speedup.main([])
    statistics.main(["--per-layer"])
    degenerate.main([])
    resnet56_fit.main([])


if __name__ == "__main__":
    main()
