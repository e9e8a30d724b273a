"""Accuracy and latency on Fashion-MNIST, dense vs low-rank: ``python -m recon.evaluate``.

    python -m recon.evaluate --dense              # the bundled model alone
    python -m recon.evaluate --bases bases/fmnist-alexnet.h5

Latency is the median wall time of repeated forward passes on one batch, dense and low-rank
called in alternation on the same input (--channels-last: both in that memory format);
per-layer times use each layer's real input shape.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from recon import data, sources
from recon.store import BasesFileError, read_bases
from recon.surgery import apply_bases, get_conv
from recon.timing import capture_layer_inputs, median_latencies


@torch.inference_mode()
def accuracy(model: nn.Module, loader: DataLoader, progress: bool = False) -> float:
    """Fraction of correctly classified images of ``loader``."""
    model.eval()
    correct = total = 0
    for images, labels in tqdm(loader, desc="accuracy", unit="batch", disable=not progress):
        correct += int((model(images).argmax(1) == labels).sum())
        total += len(labels)
    return correct / total


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recon.evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--dense", action="store_true", help="evaluate the dense model only")
    target.add_argument("--bases", type=Path, help="bases file to compare against the dense model")
    parser.add_argument("--model", default="fmnist-alexnet", help="bundled model name")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size for latency")
    parser.add_argument("--repeats", type=int, default=20, help="timed repetitions per measurement")
    parser.add_argument("--limit", type=int, help="evaluate accuracy on the first N test images only")
    parser.add_argument("--channels-last", action="store_true",
                        help="time models and inputs in the channels_last memory format (faster on CPUs)")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="apply bases even if the model's weights differ from those fitted")
    return parser


def print_model_line(label: str, acc: float, seconds: float, batch_size: int) -> None:
    print(f"{label:<9} accuracy {100 * acc:6.2f}%   latency {1e3 * seconds:8.2f} ms / batch of {batch_size}")


def run(args: argparse.Namespace) -> int:
    if args.model not in sources.zoo.BUNDLED:
        raise ValueError(f"--model must be a bundled model ({', '.join(sources.zoo.BUNDLED)}): "
                         "accuracy is measured on Fashion-MNIST")
    if args.batch_size < 1 or args.repeats < 1:
        raise ValueError("--batch-size and --repeats must be >= 1")
    dense = sources.load_model(args.model)
    test = data.loader("test", batch_size=500, limit=args.limit)
    batch = next(iter(data.loader("test", batch_size=args.batch_size)))[0]
    dense_acc = accuracy(dense, test, progress=True)
    if args.dense:
        print_model_line("dense", dense_acc, median_latencies([dense], batch, args.repeats, channels_last=args.channels_last)[0], args.batch_size)
        return 0
    layers = list(read_bases(args.bases).layers)
    low = apply_bases(copy.deepcopy(dense), args.bases, args.allow_mismatch)
    low_acc = accuracy(low, test, progress=True)
    dense_time, low_time = median_latencies([dense, low], batch, args.repeats, channels_last=args.channels_last)
    print_model_line("dense", dense_acc, dense_time, args.batch_size)
    print_model_line("low-rank", low_acc, low_time, args.batch_size)
    print(f"whole model: {100 * (low_acc - dense_acc):+.2f} points, measured speedup {dense_time / low_time:.2f}x")
    inputs = capture_layer_inputs(dense, layers, batch)
    print(f"{'layer':<12} {'dense ms':>9} {'low-rank ms':>12} {'speedup':>8} {'MACs ratio':>10}")
    for name in layers:
        conv, module = get_conv(dense, name), low.get_submodule(name)
        t_dense, t_low = median_latencies([conv, module], inputs[name], args.repeats, channels_last=args.channels_last)
        size = tuple(inputs[name].shape[-2:])
        print(f"{name:<12} {1e3 * t_dense:>9.3f} {1e3 * t_low:>12.3f} {t_dense / t_low:>7.2f}x "
              f"{module.theoretical_speedup(size):>9.2f}x")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (ValueError, KeyError, FileNotFoundError, BasesFileError, data.DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
