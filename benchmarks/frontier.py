"""Accuracy per measured speed: TargetSpeedup allocations, then calibration, then fine-tuning.

    python -m benchmarks.frontier [--model fmnist-alexnet] [--targets 2.5,3,4,5] [--finetune-images 20000]

For each target: ``recon.compress`` with ``TargetSpeedup`` (latency tables, sensitivity-
weighted errors, at most two whole-model timings; batch 32, channels_last; Scheme 2 data
mode, asymmetric for fmnist-alexnet, symmetric for fmnist-resnet), test accuracy with no
gradient steps; then ``Compression.calibrate`` (no labels, 5,000 training images, 10 epochs)
and test accuracy; then one epoch of fine-tuning on the first ``--finetune-images`` training
images (labels + distillation, validation keeps the best state) and test accuracy. The
speedup is measured again on the final model (batch 32, channels_last, calls alternating).
Seconds are wall time of each step on this machine.
"""
from __future__ import annotations

import argparse
import copy
import time

from benchmarks.common import machine, markdown_table, write_section
from recon import TargetSpeedup, compress, data, zoo
from recon.bench.timing import median_latencies
from recon.metrics import accuracy
from recon.pipeline.finetune import finetune

CALIBRATION = {"samples": 5000, "epochs": 10}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.frontier", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fmnist-alexnet")
    parser.add_argument("--targets", default="2.5,3,4,5", help="comma-separated target speedups")
    parser.add_argument("--finetune-images", type=int, default=20000, help="0: no fine-tuning")
    args = parser.parse_args(argv)
    model = zoo.load_model(args.model)
    asymmetric = args.model == "fmnist-alexnet"
    test = data.loader("test", batch_size=500)
    fit_data = lambda: data.loader("train", batch_size=250, limit=4000)
    example = next(iter(fit_data()))[0][:32].contiguous()
    dense_accuracy = accuracy(model, test)
    rows = []
    for target in (float(t) for t in args.targets.split(",")):
        start = time.perf_counter()
        result = compress(model, fit_data, layers="all", ranks=TargetSpeedup(target, example, channels_last=True),
                          asymmetric=asymmetric, progress=False)
        fit_seconds = time.perf_counter() - start
        plain = accuracy(result.model, test)
        start = time.perf_counter()
        result.calibrate(model, lambda: data.loader("train", batch_size=250, limit=CALIBRATION["samples"]),
                         progress=False, **CALIBRATION)
        calibration_seconds = time.perf_counter() - start
        calibrated = accuracy(result.model, test)
        tuned, tune_seconds = float("nan"), 0.0
        final = result.model
        if args.finetune_images:
            final = copy.deepcopy(result.model)
            start = time.perf_counter()
            finetune(final, data.loader("train", batch_size=128, shuffle=True, limit=args.finetune_images), 1, 1e-3,
                     teacher=model, validation=data.loader("validation", batch_size=500), report=lambda line: None)
            tune_seconds = time.perf_counter() - start
            tuned = accuracy(final, test)
        dense_time, low_time = median_latencies([model, final], example, 50, channels_last=True)
        ranks = {name: record.rank for name, record in result.layers.items() if record.kept}
        points = lambda value: f"{100 * value:.2f} ({100 * (value - dense_accuracy):+.2f})"
        rows.append([f"{target:g}x", f"{result.outcome.measured:.2f}x", f"{dense_time / low_time:.2f}x", ranks,
                     points(plain), f"{fit_seconds:.0f}", points(calibrated), f"{calibration_seconds:.0f}",
                     points(tuned) if args.finetune_images else "-", f"{tune_seconds:.0f}"])
        print(rows[-1], flush=True)
    header = ["target", "measured at fit", "measured at end", "ranks", "test acc. %, no gradient steps", "fit s",
              "calibrated %", "calibration s", "fine-tuned %", "fine-tune s"]
    write_section(f"frontier-{args.model}", "\n\n".join([
        f"## Accuracy per measured speed, {args.model} (`python -m benchmarks.frontier --model {args.model}`)",
        f"Machine: {machine()}. Dense test accuracy {100 * dense_accuracy:.2f}%. Scheme 2, data mode"
        f"{' (asymmetric)' if asymmetric else ''}, statistics from 4,000 training images; speedups at batch 32, "
        f"channels_last, whole model, calls alternating. Calibration: {CALIBRATION['samples']:,} unlabeled "
        f"training images, {CALIBRATION['epochs']} epochs. Fine-tuning: one epoch over the first "
        f"{args.finetune_images:,} training images, labels + distillation.",
        markdown_table(header, rows)]))


if __name__ == "__main__":
    main()
