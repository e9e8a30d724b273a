"""Run every CPU benchmark in turn (``make bench``, about 3 hours on 2 cores); each writes
its section of RESULTS.md."""
from __future__ import annotations

from benchmarks import (accuracy, accuracy_vs_speedup, busy_machine, degenerate, forward_variants, frontier, guard,
                        inference_speed, residual_time, resnet20, resnet20_frontier, resnet56_fit, resnet56_target,
                        ridge_choice,
                        solver_devices, solver_vs_cvxpy, statistics, target_speedup)


def main() -> None:
    solver_vs_cvxpy.main([])
    solver_devices.main()
    forward_variants.main([])
    inference_speed.main([])
    accuracy.main([])
    target_speedup.main([])
    target_speedup.main(["--model", "fmnist-resnet", "--target", "2", "--layouts", "channels_last"])
    target_speedup.main(["--layouts", "onnxruntime"])
    busy_machine.main([])
    guard.main([])
    accuracy_vs_speedup.main([])
    frontier.main([])
    frontier.main(["--model", "fmnist-resnet", "--targets", "2,2.5"])
    frontier.main(["--methods", "scheme1,tucker2,cp", "--targets", "2,3"])
    frontier.main(["--methods", "auto", "--targets", "2,3,4"])
    frontier.main(["--model", "fmnist-resnet", "--methods", "auto", "--targets", "2"])
    statistics.main(["--per-layer"])
    degenerate.main([])
    resnet20.main([])
    resnet20.main(["--targets", "1.5", "--max-output-change", "0.3"])
    resnet20.main(["--max-output-change", "none"])
    resnet20_frontier.main([])
    ridge_choice.main([])
    resnet20.main(["--model", "fmnist-resnet", "--targets", "2"])
    residual_time.main([])
    resnet56_fit.main([])
    resnet56_target.main([])


if __name__ == "__main__":
    main()
