"""Test accuracy of the bundled model after decomposition, no fine-tuning.

    python -m benchmarks.accuracy [--samples 4000]

Fits through ``recon.compress`` (as the CLI does) and evaluates on the 10,000 Fashion-MNIST
test images: conv2 alone at 5x and 30x fewer MACs with each scheme and mode, every conv2..5
at about 4x fewer conv MACs (Scheme 2: filter, data, data + asymmetric). Measured
whole-model speedup at batch 32 beside each, in both memory formats. (The --target-speedup
check runs through the CLI: ``python -m benchmarks.target_speedup``.)
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.common import machine, markdown_table, write_section
from recon import compress, data, zoo
from recon.bench.macs import layer_macs
from recon.bench.timing import latencies_by_format
from recon.metrics import accuracy

ABOUT_4X = {"conv2": 48, "conv3": 52, "conv4": 64, "conv5": 64}


def conv_macs(model: torch.nn.Module, example: torch.Tensor) -> int:
    """Multiply-adds per image of the five convolutions (dense or replaced)."""
    return sum(macs for name, macs in layer_macs(model, example).items() if name.startswith("conv"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4000, help="training images for statistics")
    args = parser.parse_args(argv)
    model = zoo.load_model("fmnist-alexnet")
    test = data.loader("test", batch_size=500)
    batches = lambda: data.loader("train", batch_size=250, limit=args.samples)
    example = next(iter(batches()))[0]
    timing = example[:32].contiguous()
    dense_acc = accuracy(model, test)
    dense_macs = conv_macs(model, example)
    rows = [["dense", "-", "-", "-", f"{100 * dense_acc:.2f}", "", "1.00x", "1.00x", "1.00x"]]

    def evaluate(label: str, ranks: dict[str, int], method: str, mode: str) -> None:
        approx = compress(model, batches, ranks=ranks, method=method, mode=mode, progress=False).model
        acc = accuracy(approx, test)
        measured = [dense / low for dense, low in latencies_by_format([model, approx], timing).values()]
        rows.append([label, method[-1], "data asym" if mode == "asymmetric" else mode, ranks, f"{100 * acc:.2f}",
                     f"{100 * (acc - dense_acc):+.2f}", f"{dense_macs / conv_macs(approx, example):.2f}x"]
                    + [f"{m:.2f}x" for m in measured])
        print(rows[-1], flush=True)

    for mode in ("data", "filter"):
        evaluate("conv2, 48 bases", {"conv2": 48}, "scheme2", mode)
        evaluate("conv2, 8 bases", {"conv2": 8}, "scheme2", mode)
        evaluate("conv2, 11 bases", {"conv2": 11}, "scheme1", mode)
        evaluate("conv2, 2 bases", {"conv2": 2}, "scheme1", mode)
    evaluate("conv2-5, ~4x", ABOUT_4X, "scheme2", "asymmetric")
    evaluate("conv2-5, ~4x", ABOUT_4X, "scheme2", "data")
    evaluate("conv2-5, ~4x", ABOUT_4X, "scheme2", "filter")

    body = "\n\n".join([
        "## Accuracy after decomposition, no fine-tuning (`python -m benchmarks.accuracy`)",
        f"Machine: {machine()}. fmnist-alexnet, 10,000 Fashion-MNIST test images; statistics from "
        f"{args.samples} training images (32 patch locations each). 'conv MACs' = reduction of the five convs' "
        "multiply-adds; 'measured' = dense time / low-rank time of the whole model at batch 32, calls alternating, "
        "both models in the NCHW (default) or the channels_last memory format.",
        markdown_table(["layers", "scheme", "mode", "bases", "test acc. %", "vs dense", "conv MACs", "measured NCHW",
                        "measured channels_last"], rows),
    ])
    write_section("accuracy", body)


if __name__ == "__main__":
    main()
