"""The published CIFAR-10 ResNet-20 on real CIFAR-10 images: each step of the residual-network
pipeline as its own row, accuracy at measured speed.

    python -m benchmarks.resnet20 [--targets 1.5,2] [--calibration 1024] [--max-output-change 0.1|none]
                                  [--model resnet20|fmnist-resnet]

Data: ``benchmarks.cifar`` (../shared/data or $RECON_SHARED_DATA): statistics, block
reconstruction and calibration see the first ``--calibration`` training images only; test
accuracy on the 846 test images, top-1 agreement with the dense model on the remaining
training images. For each target, with ``TargetSpeedup`` (Scheme 2, data mode, batch 32,
channels_last):

1. per-layer fit (symmetric statistics), 2. the same with ``fold_batchnorm``, 3. folded and
asymmetric (each layer on the approximated network's inputs), then on that result
4. block reconstruction, 5. calibration (both without labels), 6. fine-tuning with labels,
``--finetune-epochs`` epochs on all 4,660 training images (distilled from the dense model);
that row's agreement is on the test images, as it has trained on every training image.

Speedups are measured at the end of each row, side by side in one round-robin run, against
the dense model unfolded and folded the same way (folding alone is a speedup any runtime
gets). ``--max-output-change`` is TargetSpeedup's bound (``none`` lifts it, which lets the
allocation reach the target and leaves the accuracy to the later steps). The rows also go to
``benchmarks/resnet20-<bound>.json``, which ``benchmarks.resnet20_frontier`` plots.

``--model fmnist-resnet`` runs the same steps on the bundled Fashion-MNIST ResNet-20 (1x28x28,
32/64/128 channels, projection shortcuts): calibration on the first training images, agreement
on the next 3,636, accuracy on the 10,000 test images (``cifar.fashion``); its rows go to the
section and file ``residual-fmnist-resnet-<bound>``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks import cifar
from benchmarks.common import machine, markdown_table, write_section
from recon import TargetSpeedup, Timing, compress
from recon.bench.timing import Spread, round_latencies
from recon.pipeline.finetune import finetune

REPEATS = 40  # alternating calls per model and round
ROUNDS = 5  # separate timing rounds: each speedup is their median, with their range
FOLDER = Path(__file__).resolve().parent
STEPS = ("per-layer fit", "+ BatchNorm folded", "+ asymmetric", "+ block reconstruction", "+ calibration",
         "+ fine-tuning with labels")


def _row(step: str, target: float, result, data: cifar.Cifar, dense_accuracy: float, seconds: float,
         labelled: bool = False) -> dict:
    timed = round_latencies([data.model, result.reference(data.model), result.model], data.calibration[:32], ROUNDS,
                            REPEATS, channels_last=True)
    speedup, folded = (Spread(tuple(times[index] / times[2] for times in timed)) for index in (0, 1))
    accuracy, agreement = cifar.quality(result.model, data.model, data)
    if labelled:  # it has trained on every training image: agreement on the test images
        agreement = float((cifar.predictions(result.model, data.test) == cifar.predictions(data.model, data.test))
                          .float().mean())
    row = {"target": target, "step": step, "speedup": speedup.median, "speedup_folded": folded.median,
           "speedup_rounds": speedup.rounds, "speedup_folded_rounds": folded.rounds,
           "accuracy": accuracy, "drop": accuracy - dense_accuracy, "agreement": agreement,
           "agreement_on": "test" if labelled else "held-out train", "seconds": seconds,
           "ranks": {record.name: record.rank for record in result.kept},
           "compress_outcome": result.outcome.description if result.outcome else None}
    print(row, flush=True)
    return row


def _cells(row: dict) -> list:
    marker = " (test)" if row["agreement_on"] == "test" else ""
    return [f"{row['target']:g}x", row["step"], Spread(tuple(row["speedup_rounds"])).describe(),
            Spread(tuple(row["speedup_folded_rounds"])).describe(),
            f"{100 * row['accuracy']:.2f} ({100 * row['drop']:+.2f})", f"{100 * row['agreement']:.2f}{marker}",
            f"{row['seconds']:.0f}"]


def _steps(target: float, bound: float | None, data: cifar.Cifar, dense_accuracy: float, epochs: int) -> list[dict]:
    """The six rows of one target."""
    rows, result = [], None
    for step, fold, mode in zip(STEPS[:3], (False, True, True), ("data", "data", "asymmetric")):
        start = time.perf_counter()
        policy = TargetSpeedup(target, cache=False, max_output_change=bound)
        result = compress(data.model, data.batches(), layers="all", ranks=policy, fold_batchnorm=fold, mode=mode,
                          example_input=data.calibration[:32], timing=Timing(batch=32, channels_last=True),
                          progress=False)
        rows.append(_row(step, target, result, data, dense_accuracy, time.perf_counter() - start))
    start = time.perf_counter()
    result.reconstruct_blocks(data.batches(), progress=False)
    rows.append(_row(STEPS[3], target, result, data, dense_accuracy, time.perf_counter() - start))
    start = time.perf_counter()
    result.calibrate(data.batches(), progress=False)
    rows.append(_row(STEPS[4], target, result, data, dense_accuracy, time.perf_counter() - start))
    start = time.perf_counter()
    images = torch.cat([data.calibration, data.held_out])
    labels = torch.cat([data.calibration_labels, data.held_out_labels]).long()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    train = list(zip(images[order].split(64), labels[order].split(64)))
    finetune(result.model, train, epochs, 1e-3, teacher=result.reference(data.model), report=lambda line: None)
    rows.append(_row(STEPS[5], target, result, data, dense_accuracy, time.perf_counter() - start, labelled=True))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.resnet20", description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="1.5,2")
    parser.add_argument("--calibration", type=int, default=1024)
    parser.add_argument("--max-output-change", default="0.1", help="TargetSpeedup's bound, or none")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--model", choices=("resnet20", "fmnist-resnet"), default="resnet20")
    args = parser.parse_args(argv)
    bound = None if args.max_output_change == "none" else float(args.max_output_change)
    published = args.model == "resnet20"
    data = cifar.load(args.calibration) if published else cifar.fashion(args.calibration)
    name = f"resnet20-{args.max_output_change}" if published else f"residual-fmnist-resnet-{args.max_output_change}"
    title = "Published ResNet-20 on real CIFAR-10" if published else "Bundled fmnist-resnet on Fashion-MNIST"
    command = f"--targets {args.targets} --max-output-change {args.max_output_change}" + (
        "" if published else " --model fmnist-resnet")
    dense_accuracy, _ = cifar.quality(data.model, data.model, data)
    rows = [row for target in (float(t) for t in args.targets.split(","))
            for row in _steps(target, bound, data, dense_accuracy, args.finetune_epochs)]
    (FOLDER / f"{name}.json").write_text(json.dumps(
        {"machine": machine(), "dense_accuracy": dense_accuracy, "rows": rows}, indent=1))
    write_section(name, "\n\n".join([
        f"## {title} (`python -m benchmarks.resnet20 {command}`)",
        f"Machine: {machine()}. Dense: {100 * dense_accuracy:.2f}% on the {len(data.test):,} test images. Statistics, block "
        f"reconstruction and calibration on the first {args.calibration:,} training images, no labels; agreement = "
        f"top-1 agreement with the dense model on the other {len(data.held_out):,} training images (on the test "
        f"images for the last row, which fine-tunes with the labels of all {len(data.calibration) + len(data.held_out):,} "
        f"training images for {args.finetune_epochs} epochs). Scheme 2, data mode, "
        f"`TargetSpeedup(max_output_change={args.max_output_change})`, batch 32, channels_last; the first three rows "
        "are separate `compress` calls, the later ones build on the third (same layers and ranks: their speedups "
        "differ by timing scatter alone). Speedups of the row's final model measured side by side against the "
        f"dense model as published and with its BatchNorms folded: median (range) of {ROUNDS} rounds of "
        f"{REPEATS} alternating calls. Seconds: wall time of the row's step. One run.",
        markdown_table(["target", "step", "speedup vs dense", "speedup vs dense, BN folded", "test acc. %",
                        "agreement %", "seconds"], [_cells(row) for row in rows])]))


if __name__ == "__main__":
    main()
