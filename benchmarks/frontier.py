"""Accuracy per measured speed: TargetSpeedup allocations, then calibration, then fine-tuning,
for every method.

    python -m benchmarks.frontier [--model fmnist-alexnet] [--methods scheme2,auto] [--targets 2.5,3,4,5]
                                  [--finetune-images 20000]

For each method and target: ``recon.compress`` with ``TargetSpeedup`` (latency tables,
sensitivity-weighted errors, at most two whole-model timings; batch 32, channels_last; data
mode for the methods that fit data, asymmetric on fmnist-alexnet, symmetric on fmnist-resnet;
filter mode for the others; ``auto`` chooses the method per layer), test accuracy with no
gradient steps; then ``Compression.calibrate`` (no labels, 5,000 training images, 10 epochs)
and test accuracy; then one epoch of fine-tuning on the first ``--finetune-images`` training
images (labels + distillation, validation keeps the best state) and test accuracy. The
speedup is measured again on the final model (batch 32, channels_last, calls alternating).
Seconds are wall time of each step on this machine. Writes a section of RESULTS.md and a plot
(benchmarks/frontier-<model>[-<methods>].png).
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from benchmarks.common import machine, markdown_table, write_section
from recon import TargetSpeedup, Timing, compress, data, methods, zoo
from recon.bench.timing import median_latencies
from recon.metrics import accuracy
from recon.pipeline.finetune import finetune

CALIBRATION = {"samples": 5000, "epochs": 10}
CP_ITERATIONS = 50  # ALS iterations of a CP fit (the default is 200): keeps the benchmark short
HERE = Path(__file__).resolve().parent


def _ranks(result) -> str:
    """The kept layers' ranks, with their method when the methods differ."""
    kept = result.kept
    several = len({record.method for record in kept}) > 1
    return ", ".join(f"{record.name}: {record.method + ':' if several else ''}{record.rank}" for record in kept)


def _plot(path: Path, rows: list[dict], dense: float, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for index, method in enumerate(dict.fromkeys(row["method"] for row in rows)):
        mine = [row for row in rows if row["method"] == method]
        colour = f"C{index}"
        for key, marker, label in (("plain", "o", "no gradient steps"), ("calibrated", "s", "calibrated"),
                                   ("tuned", "^", "fine-tuned")):
            points = [(row["speedup"], 100 * row[key]) for row in mine if row[key] == row[key]]
            if points:
                axis.plot(*zip(*sorted(points)), marker=marker, color=colour, linestyle="-" if key == "plain" else ":",
                          label=f"{method}, {label}")
    axis.axhline(100 * dense, color="grey", linestyle="--", label="dense")
    axis.set_xlabel("measured whole-model speedup (batch 32, channels_last)")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(f"{model}: accuracy per measured speed")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.frontier", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fmnist-alexnet")
    parser.add_argument("--methods", default="scheme2", help=f"comma-separated methods, or {methods.AUTO}")
    parser.add_argument("--targets", default="2.5,3,4,5", help="comma-separated target speedups")
    parser.add_argument("--finetune-images", type=int, default=20000, help="0: no fine-tuning")
    args = parser.parse_args(argv)
    model = zoo.load_model(args.model)
    test = data.loader("test", batch_size=500)
    fit_data = lambda: data.loader("train", batch_size=250, limit=4000)
    example = next(iter(fit_data()))[0][:32].contiguous()
    dense_accuracy = accuracy(model, test)
    rows, table = [], []
    for method in args.methods.split(","):
        fits_data = methods.resolve(method).fits_data
        mode = "asymmetric" if fits_data and args.model == "fmnist-alexnet" else None
        for target in (float(t) for t in args.targets.split(",")):
            start = time.perf_counter()
            candidates = methods.with_settings(methods.resolve(method), {"cp": {"iterations": CP_ITERATIONS}})
            result = compress(model, fit_data, layers="all", method=candidates, mode=mode, ranks=TargetSpeedup(target),
                              example_input=example, timing=Timing(batch=len(example), channels_last=True),
                              progress=False)
            fit_seconds = time.perf_counter() - start
            plain = accuracy(result.model, test)
            if not result.kept:  # nothing pays within the quality bounds: nothing to calibrate or tune
                table.append([method, f"{target:g}x", "every layer dense: " + result.outcome.description, "-", "-",
                              "-", f"{fit_seconds:.0f}", "-", "-", "-", "-"])
                print(table[-1], flush=True)
                continue
            start = time.perf_counter()
            result.calibrate(lambda: data.loader("train", batch_size=250, limit=CALIBRATION["samples"]),
                             progress=False, **CALIBRATION)
            calibration_seconds = time.perf_counter() - start
            calibrated = accuracy(result.model, test)
            tuned, tune_seconds = float("nan"), 0.0
            final = result.model
            if args.finetune_images:
                final = copy.deepcopy(result.model)
                start = time.perf_counter()
                finetune(final, data.loader("train", batch_size=128, shuffle=True, limit=args.finetune_images), 1,
                         1e-3, teacher=model, validation=data.loader("validation", batch_size=500),
                         report=lambda line: None)
                tune_seconds = time.perf_counter() - start
                tuned = accuracy(final, test)
            dense_time, low_time = median_latencies([model, final], example, 50, channels_last=True)
            rows.append({"method": method, "speedup": dense_time / low_time, "plain": plain, "calibrated": calibrated,
                         "tuned": tuned})
            points = lambda value: f"{100 * value:.2f} ({100 * (value - dense_accuracy):+.2f})"
            table.append([method, f"{target:g}x", f"{result.outcome.measured:.2f}x", f"{dense_time / low_time:.2f}x",
                          _ranks(result), points(plain), f"{fit_seconds:.0f}", points(calibrated),
                          f"{calibration_seconds:.0f}", points(tuned) if args.finetune_images else "-",
                          f"{tune_seconds:.0f}"])
            print(table[-1], flush=True)
    name = f"frontier-{args.model}" + ("" if args.methods == "scheme2" else "-" + args.methods.replace(",", "-"))
    plot = HERE / f"{name}.png"
    _plot(plot, rows, dense_accuracy, args.model)
    header = ["method", "target", "measured at fit", "measured at end", "ranks", "test acc. %, no gradient steps",
              "fit s", "calibrated %", "calibration s", "fine-tuned %", "fine-tune s"]
    write_section(name, "\n\n".join([
        f"## Accuracy per measured speed, {args.model} (`python -m benchmarks.frontier --model {args.model} "
        f"--methods {args.methods} --targets {args.targets}`)",
        f"Machine: {machine()}. Dense test accuracy {100 * dense_accuracy:.2f}%. Data mode for the methods that "
        f"fit data{' (asymmetric)' if args.model == 'fmnist-alexnet' else ''}, filter mode for the others "
        f"(CP with {CP_ITERATIONS} ALS iterations), statistics from 4,000 training images; speedups at batch 32, "
        f"channels_last, whole model, calls alternating. Calibration: {CALIBRATION['samples']:,} unlabeled "
        f"training images, {CALIBRATION['epochs']} epochs. Fine-tuning: one epoch over the first "
        f"{args.finetune_images:,} training images, labels + distillation. Plot: `{plot.name}`.",
        markdown_table(header, table)]))


if __name__ == "__main__":
    main()
