"""The published CIFAR-10 ResNet-20 on real CIFAR-10 images: each step of the residual-network
pipeline as its own row, accuracy at measured speed, no labels.

    python -m benchmarks.resnet20 [--targets 1.5,2] [--calibration 1024]

Data: ``benchmarks.cifar`` (../shared/data or $RECON_SHARED_DATA): the statistics, block
reconstruction and calibration see the first ``--calibration`` training images only; test
accuracy on the 846 test images, top-1 agreement with the dense model on the remaining
training images. For each target: ``TargetSpeedup`` (Scheme 2, symmetric data mode, batch 32,
channels_last) without and with ``fold_batchnorm``, then block reconstruction, then
calibration on the folded result. Speedups are measured at the end of each row, side by
side in one round-robin run, against the dense model unfolded and folded the same way
(folding alone is a speedup any runtime gets). ``--max-output-change`` is TargetSpeedup's
bound (``none`` lifts it, which lets the allocation reach the target and leaves the
accuracy to the later steps).
"""
from __future__ import annotations

import argparse
import time

from benchmarks import cifar
from benchmarks.common import machine, markdown_table, write_section
from recon import TargetSpeedup, compress
from recon.bench.timing import median_latencies

REPEATS = 100


def _row(label: str, target: float, result, data: cifar.Cifar, dense_accuracy: float, seconds: float) -> list:
    folded = result.reference(data.model)
    dense_time, folded_time, low_time = median_latencies([data.model, folded, result.model],
                                                         data.calibration[:32], REPEATS, channels_last=True)
    accuracy, agreement = cifar.quality(result.model, data.model, data)
    return [f"{target:g}x", label, f"{dense_time / low_time:.2f}x", f"{folded_time / low_time:.2f}x",
            f"{100 * accuracy:.2f} ({100 * (accuracy - dense_accuracy):+.2f})", f"{100 * agreement:.2f}",
            f"{seconds:.0f}"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.resnet20", description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="1.5,2")
    parser.add_argument("--calibration", type=int, default=1024)
    parser.add_argument("--max-output-change", default="0.1", help="TargetSpeedup's bound, or none")
    args = parser.parse_args(argv)
    bound = None if args.max_output_change == "none" else float(args.max_output_change)
    data = cifar.load(args.calibration)
    dense_accuracy, _ = cifar.quality(data.model, data.model, data)
    rows = []
    for target in (float(t) for t in args.targets.split(",")):
        for fold in (False, True):
            start = time.perf_counter()
            policy = TargetSpeedup(target, data.calibration[:32], channels_last=True, cache=False,
                                   max_output_change=bound)
            result = compress(data.model, data.batches(), layers="all", ranks=policy, fold_batchnorm=fold,
                              progress=False)
            rows.append(_row("per-layer fit" + (", BatchNorm folded" if fold else ""), target, result, data,
                             dense_accuracy, time.perf_counter() - start))
            print(rows[-1], flush=True)
        start = time.perf_counter()
        result.reconstruct_blocks(data.model, data.batches(), progress=False)
        rows.append(_row("+ block reconstruction", target, result, data, dense_accuracy, time.perf_counter() - start))
        print(rows[-1], flush=True)
        start = time.perf_counter()
        result.calibrate(data.model, data.batches(), progress=False)
        rows.append(_row("+ calibration", target, result, data, dense_accuracy, time.perf_counter() - start))
        print(rows[-1], flush=True)
    write_section(f"resnet20-{args.max_output_change}", "\n\n".join([
        f"## Published ResNet-20 on real CIFAR-10, no labels (`python -m benchmarks.resnet20 --targets {args.targets} "
        f"--max-output-change {args.max_output_change}`)",
        f"Machine: {machine()}. Dense: {100 * dense_accuracy:.2f}% on the 846 test images. Statistics, block "
        f"reconstruction and calibration on the first {args.calibration:,} training images; agreement = top-1 "
        f"agreement with the dense model on the other {len(data.held_out):,} training images. Scheme 2, symmetric "
        f"data mode, `TargetSpeedup(max_output_change={args.max_output_change})`, batch 32, channels_last; speedups "
        f"of the row's final model measured side by side ({REPEATS} alternating calls) against the dense model "
        "as published and with its BatchNorms folded. Seconds: wall time of the row's step. One run.",
        markdown_table(["target", "step", "speedup vs dense", "speedup vs dense, BN folded", "test acc. %",
                        "agreement %", "seconds"], rows)]))


if __name__ == "__main__":
    main()
