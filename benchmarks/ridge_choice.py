"""One ridge against a ridge chosen per layer on held-out calibration samples, on the
published ResNet-20 and real CIFAR-10 images (accuracy only, nothing timed).

    python -m benchmarks.ridge_choice [--calibration 1024] [--fraction 0.5]

Every 3x3 conv but the stem at Scheme 2 rank ``fraction`` * N, BatchNorms folded, data mode,
symmetric and asymmetric; ``SolverOptions(ridge=1e-3)`` against ``ridge=RIDGE_GRID``. Test
accuracy on the 846 test images, top-1 agreement with the dense model on the training images
not used for calibration (``benchmarks.cifar``).
"""
from __future__ import annotations

import argparse
import time

from torch import nn

from benchmarks import cifar
from benchmarks.common import machine, markdown_table, write_section
from recon import SolverOptions, compress
from recon.methods import RIDGE_GRID


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ridge_choice", description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=int, default=1024)
    parser.add_argument("--fraction", type=float, default=0.5)
    args = parser.parse_args(argv)
    data = cifar.load(args.calibration)
    dense_accuracy, _ = cifar.quality(data.model, data.model, data)
    convs = [name for name, module in data.model.named_modules()
             if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3) and name != "conv1"]
    ranks = {name: max(1, int(args.fraction * data.model.get_submodule(name).out_channels)) for name in convs}
    rows = []
    for statistics, mode in (("symmetric", "data"), ("asymmetric", "asymmetric")):
        for ridge in (1e-3, RIDGE_GRID):
            start = time.perf_counter()
            result = compress(data.model, data.batches(), layers=convs, ranks=ranks, fold_batchnorm=True,
                              mode=mode, solver=SolverOptions(ridge=ridge), progress=False)
            seconds = time.perf_counter() - start
            accuracy, agreement = cifar.quality(result.model, data.model, data)
            chosen = sorted({float(r.history["ridge_held_out_loss"][r.history["ridge_held_out_loss"][:, 1].argmin(), 0])
                             for r in result.kept if "ridge_held_out_loss" in r.history})
            rows.append([statistics, "per layer (held out)" if chosen else "1e-3",
                         ", ".join(f"{value:g}" for value in chosen) or "-",
                         f"{100 * accuracy:.2f} ({100 * (accuracy - dense_accuracy):+.2f})", f"{100 * agreement:.2f}",
                         f"{seconds:.0f}"])
            print(rows[-1], flush=True)
    write_section("ridge-choice", "\n\n".join([
        "## Ridge per layer from held-out samples (`python -m benchmarks.ridge_choice`)",
        f"Machine: {machine()}. Published ResNet-20, {args.calibration:,} real CIFAR-10 training images for the "
        f"statistics (every fifth held out for the choice), every 3x3 conv but the stem at Scheme 2 rank "
        f"{args.fraction:g} N, BatchNorms folded. Dense {100 * dense_accuracy:.2f}% on the {len(data.test):,} test "
        f"images; agreement on the other {len(data.held_out):,} training images. Seconds: `compress` wall time. One "
        "run, nothing timed.",
        markdown_table(["statistics", "ridge", "ridges chosen", "test acc. %", "agreement %", "seconds"], rows)]))


if __name__ == "__main__":
    main()
