"""``TargetSpeedup(2)`` on a 55-conv CIFAR ResNet-56: met within the layer error bound, or
stopped and reported with the best speedup reachable there (no silent rank-1 layers).

    python -m benchmarks.resnet56_target [--target 2] [--max-layer-loss 0.2]

The model is ``benchmarks.models.cifar_resnet56`` (seeded random weights: no pretrained CIFAR
weights can be read here). Its statistics come from 2,000 Fashion-MNIST training images
resized to 32x32 and repeated over three channels; Scheme 2, data mode, batch 32, NCHW. The
rows (with the default bound on the model's predicted output change, and without it) give the
outcome, the largest output variance lost by any replaced layer (the bound is
``max_layer_loss``), how many replaced layers have rank 1, and the wall time.
"""
from __future__ import annotations

import argparse
import logging
import time

import torch
from torch.nn import functional

from benchmarks.common import machine, markdown_table, write_section
from benchmarks.models import cifar_resnet56
from recon import TargetSpeedup, Timing, compress, data

OUTPUT_BOUNDS = (0.1, None)  # the default bound on the model's predicted output change, and none


def fashion_as_cifar(count: int = 2000, batch_size: int = 250) -> list[torch.Tensor]:
    """Fashion-MNIST training images as 3x32x32 batches (bilinear resize, grey in every channel)."""
    batches = []
    for images, _ in data.loader("train", batch_size=batch_size, limit=count):
        resized = functional.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
        batches.append(resized.expand(-1, 3, -1, -1).contiguous())
    return batches


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.resnet56_target", description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=2.0)
    parser.add_argument("--max-layer-loss", type=float, default=0.2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model, batches = cifar_resnet56(), fashion_as_cifar()
    rows = []
    for output_bound in OUTPUT_BOUNDS:
        policy = TargetSpeedup(args.target, max_layer_loss=args.max_layer_loss, max_output_change=output_bound)
        start = time.perf_counter()
        result = compress(model, batches, layers="all", ranks=policy, example_input=batches[0][:32],
                          timing=Timing(batch=32), progress=False)
        seconds = time.perf_counter() - start
        kept = result.kept
        worst = max((record.output_variance_lost for record in kept), default=float("nan"))
        layers = len(result.layers) + len(result.dense_layers)
        rows.append([f"{args.target:g}x", "none" if output_bound is None else f"{output_bound:g}",
                     result.outcome.description, f"{len(kept)} of {layers}", f"{worst:.3f}",
                     sum(1 for record in kept if record.rank == 1), f"{seconds:.0f}"])
        print(rows[-1], flush=True)
    write_section("resnet56-target", "\n\n".join([
        "## TargetSpeedup on a CIFAR ResNet-56 (`python -m benchmarks.resnet56_target`)",
        f"Machine: {machine()}. `benchmarks.models:cifar_resnet56` (seeded random weights), statistics from "
        "2,000 Fashion-MNIST training images resized to 3x32x32; Scheme 2, data mode, batch 32, NCHW, "
        f"`max_layer_loss={args.max_layer_loss:g}`. One run of each row.",
        markdown_table(["target", "max_output_change", "outcome", "layers replaced", "largest output variance lost",
                        "rank-1 layers", "seconds"], rows)]))


if __name__ == "__main__":
    main()
