"""Accuracy and latency on Fashion-MNIST, dense vs low-rank: ``python -m recon.evaluate``.

    python -m recon.evaluate --dense              # the bundled model alone
    python -m recon.evaluate --bases bases/fmnist-alexnet.h5
    python -m recon.evaluate --bases any.h5 --table   # the file's per-layer table only

Latency is the median wall time of repeated forward passes on one batch, dense and low-rank
called in alternation on the same input, in both memory formats (NCHW, the default, and
channels_last); per-layer times use each layer's real input shape.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

from recon.bench.timing import capture_layer_inputs, latencies_by_format
from recon.cli import common, sources
from recon.errors import ConfigError
from recon.io.bases_file import read_bases
from recon.metrics import accuracy
from recon.nn import LowRankModule
from recon.pipeline.report import MAX_OUTPUT_LOSS, table
from recon.surgery import apply_bases


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recon.evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--dense", action="store_true", help="evaluate the dense model only")
    target.add_argument("--bases", type=Path, help="bases file to compare against the dense model")
    parser.add_argument("--model", default="fmnist-alexnet", help="bundled model name")
    parser.add_argument("--batch-size", type=common.timing_batch, default=32,
                        help=f"batch size for latency (at most {common.MAX_TIMING_BATCH})")
    parser.add_argument("--repeats", type=common.positive_int, default=20, help="timed repetitions per measurement")
    parser.add_argument("--limit", type=common.positive_int, help="evaluate accuracy on the first N test images only")
    parser.add_argument("--device", type=common.device, help="run on this device (e.g. cuda); default: cpu")
    parser.add_argument("--table", action="store_true",
                        help="print the per-layer table of --bases and stop (any bases file; no model needed)")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="apply bases even if the model's weights differ from those fitted")
    return parser


def bases_table(path: Path) -> str:
    """The per-layer table of a bases file's records (the bound on output loss the file was fitted with)."""
    records = list(read_bases(path).layers.values())
    limit = next((r.config["max_output_loss"] for r in records if "max_output_loss" in r.config), MAX_OUTPUT_LOSS)
    return table(records, limit)


def evaluate(args: argparse.Namespace) -> int:
    if args.table:
        if args.bases is None:
            raise ConfigError("--table prints the layers of a bases file: give --bases FILE")
        print(bases_table(args.bases))
        return 0
    if not sources.is_bundled(args.model):
        raise ConfigError(f"--model must be a bundled model ({', '.join(sources.zoo.BUNDLED)}): accuracy is "
                          "measured on Fashion-MNIST")
    device = args.device or "cpu"
    dense = sources.load_model(args.model).to(device)
    low = None if args.dense else apply_bases(copy.deepcopy(dense), args.bases, args.allow_mismatch)
    test = sources.fashion_mnist("test", args.limit, batch_size=500)()
    batch = next(iter(sources.fashion_mnist("test", args.batch_size, batch_size=args.batch_size)()))[0].to(device)
    dense_acc = accuracy(dense, test, progress=True)
    if low is None:
        times = latencies_by_format([dense], batch, args.repeats)
        print(f"dense: accuracy {100 * dense_acc:.2f}%, latency per batch of {args.batch_size}: "
              + ", ".join(f"{layout} {1e3 * t[0]:.2f} ms" for layout, t in times.items()))
        return 0
    print(bases_table(args.bases))
    low_acc = accuracy(low, test, progress=True)
    print(f"accuracy: dense {100 * dense_acc:.2f}%, low-rank {100 * low_acc:.2f}% ({100 * (low_acc - dense_acc):+.2f} points)")
    print(f"latency per batch of {args.batch_size}, dense / low-rank ms (measured speedup):")
    print(f"{'':<12} {'NCHW':>26} {'channels_last':>26} {'MACs ratio':>10}")
    layers = [name for name, module in low.named_modules() if isinstance(module, LowRankModule)]
    inputs = capture_layer_inputs(dense, layers, batch)
    rows = [("whole model", dense, low, batch, None)]
    rows += [(name, dense.get_submodule(name), low.get_submodule(name), inputs[name], tuple(inputs[name].shape[1:]))
             for name in layers]
    for label, reference, candidate, feed, shape in rows:
        cells = [f"{1e3 * t_dense:8.2f} / {1e3 * t_low:7.2f} ({t_dense / t_low:4.2f}x)"
                 for t_dense, t_low in latencies_by_format([reference, candidate], feed, args.repeats).values()]
        macs = "" if shape is None else f"{candidate.theoretical_speedup(shape):.2f}x"
        print(f"{label:<12} {cells[0]:>26} {cells[1]:>26} {macs:>10}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return common.run(lambda: evaluate(args))


if __name__ == "__main__":
    sys.exit(main())
