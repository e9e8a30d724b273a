"""Test accuracy of the bundled model after decomposition, no fine-tuning.

    python -m benchmarks.accuracy [--samples 4000]

Fits (through recon.fitting, as the CLI does) and evaluates on the 10,000 Fashion-MNIST
test images: conv2 alone at 5x and 30x fewer MACs with each scheme and mode, every conv2..5
at about 4x fewer conv MACs (Scheme 2: filter, data, data + asymmetric). Measured
whole-model speedup at batch 32 beside each, in both memory formats. (The --target-speedup
check runs through the CLI: ``python -m benchmarks.target_speedup``.)
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.common import machine, markdown_table, write_section
from recon import data, ranks, zoo
from recon.evaluate import accuracy
from recon.fitting import FitSettings, fit_model, layer_input_sizes
from recon.surgery import eligible_layers
from recon.timing import latencies_by_format

ABOUT_4X = {"conv2": 48, "conv3": 52, "conv4": 64, "conv5": 64}


def conv_macs(model: torch.nn.Module, example: torch.Tensor) -> int:
    return sum(macs for name, macs in ranks.dense_macs_by_layer(model, example).items() if name.startswith("conv"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4000, help="training images for statistics")
    args = parser.parse_args(argv)
    model = zoo.load_model("fmnist-alexnet")
    test = data.loader("test", batch_size=500)
    batches = lambda: data.loader("train", batch_size=250, limit=args.samples)
    example = next(iter(batches()))[0]
    timing = example[:32].contiguous()
    sizes = layer_input_sizes(model, eligible_layers(model), example[:1])
    dense_acc = accuracy(model, test)
    dense_macs = conv_macs(model, example)
    rows = [["dense", "-", "-", "-", f"{100 * dense_acc:.2f}", "", "1.00x", "1.00x", "1.00x"]]

    def evaluate(label: str, counts: dict[str, int], scheme: int, mode: str, asymmetric: bool = False) -> None:
        settings = FitSettings(scheme=scheme, mode=mode, asymmetric=asymmetric)
        approx = fit_model(model, counts, settings, batches, sizes)
        acc = accuracy(approx, test)
        macs = conv_macs(model, example) - sum(
            ranks.dense_macs_by_layer(model, example)[name] - approx.get_submodule(name).macs(sizes[name])
            for name in counts)
        measured = [dense / low for dense, low in latencies_by_format([model, approx], timing).values()]
        rows.append([label, scheme, mode + (" asym" if asymmetric else ""), counts, f"{100 * acc:.2f}",
                     f"{100 * (acc - dense_acc):+.2f}", f"{dense_macs / macs:.2f}x"] + [f"{m:.2f}x" for m in measured])
        print(rows[-1], flush=True)

    for mode in ("data", "filter"):
        evaluate("conv2, 48 bases", {"conv2": 48}, 2, mode)
        evaluate("conv2, 8 bases", {"conv2": 8}, 2, mode)
        evaluate("conv2, 11 bases", {"conv2": 11}, 1, mode)
        evaluate("conv2, 2 bases", {"conv2": 2}, 1, mode)
    evaluate("conv2-5, ~4x", ABOUT_4X, 2, "data", asymmetric=True)
    evaluate("conv2-5, ~4x", ABOUT_4X, 2, "data")
    evaluate("conv2-5, ~4x", ABOUT_4X, 2, "filter")

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
