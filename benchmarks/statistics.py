"""What gathering statistics costs: one pass for every layer against the work it must do.

    python -m benchmarks.statistics [--per-layer]

For the bundled fmnist-alexnet (4,000 Fashion-MNIST training images, its 5 convs) and a
CIFAR ResNet-56 (benchmarks/models.py, 1,000 random 3x32x32 images, its 55 convs), times
(1) one pass of the samples through the dense model, (2) the per-layer accumulation alone
(patch sampling and extraction, float64 sums and x^T x, on inputs captured beforehand),
(3) ``recon.observe`` on every layer, and with ``--per-layer`` (4) one ``observe`` call per
layer, i.e. a pass over the data per layer as recon 0.1 did. The target: (3) <= 1.5 x ((1) + (2)).
"""
from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import machine, markdown_table, write_section
from benchmarks.models import cifar_batches, cifar_resnet56
from recon import data, methods, observe, zoo
from recon.nn import geometry_of
from recon.pipeline.observe import PatchSampler, gram
from recon.pipeline.select import eligible_layers


def seconds(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


@torch.inference_mode()
def forward_seconds(model: torch.nn.Module, batches: list[torch.Tensor]) -> float:
    return seconds(lambda: [model(batch) for batch in batches])


@torch.inference_mode()
def accumulation_seconds(model: torch.nn.Module, batches: list[torch.Tensor], layers: list[str]) -> float:
    """The hooks' work alone: every layer's inputs are captured first, then only the sampling,
    extraction and float64 sums are timed."""
    total = 0.0
    samplers = {name: PatchSampler(name, geometry_of(model.get_submodule(name)), 32, 0) for name in layers}
    for batch in batches:
        captured = {}
        hooks = [model.get_submodule(name).register_forward_pre_hook(
            lambda module, args, name=name: captured.__setitem__(name, args[0])) for name in layers]
        model(batch)
        for hook in hooks:
            hook.remove()

        def accumulate() -> None:
            for name in layers:
                sampler = samplers[name]
                x = sampler.patches(captured[name], sampler.draw(captured[name]))
                x.sum(0)
                gram(x)

        total += seconds(accumulate)
    return total


def measure(label: str, model: torch.nn.Module, batches: list[torch.Tensor], per_layer: bool) -> list[object]:
    layers = eligible_layers(model, methods.get("scheme2"))
    observe(model, batches[:1], layers, progress=False)  # warm up allocator and kernels
    forward = forward_seconds(model, batches)
    accumulate = accumulation_seconds(model, batches, layers)
    one_pass = seconds(lambda: observe(model, batches, layers, progress=False))
    row = [label, len(layers), sum(len(b) for b in batches), f"{forward:.1f}", f"{accumulate:.1f}", f"{one_pass:.1f}",
           f"{one_pass / (forward + accumulate):.2f}"]
    if per_layer:
        separate = seconds(lambda: [observe(model, batches, [name], progress=False) for name in layers])
        row += [f"{separate:.1f}", f"{separate / one_pass:.1f}x"]
    else:
        row += ["", ""]
    print(row, flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.statistics", description=__doc__.splitlines()[0])
    parser.add_argument("--per-layer", action="store_true", help="also time one pass per layer (slow on ResNet-56)")
    args = parser.parse_args(argv)
    fmnist = [images for images, _ in data.loader("train", batch_size=250, limit=4000)]
    rows = [measure("fmnist-alexnet", zoo.load_model("fmnist-alexnet"), fmnist, args.per_layer),
            measure("CIFAR ResNet-56 (random weights)", cifar_resnet56(), cifar_batches(1000), args.per_layer)]
    body = "\n\n".join([
        "## Statistics in one pass (`python -m benchmarks.statistics --per-layer`)",
        f"Machine: {machine()}. Symmetric statistics of every eligible conv, 32 patch locations per image, "
        "batches of 250; seconds from one run. 'accumulation' = the per-layer work alone (sampling, extraction, "
        "float64 sums and x^T x) on inputs captured beforehand; ratio = observe / (forward + accumulation), target "
        "<= 1.5; 'one pass per layer' = one observe call per layer, as recon 0.1 gathered them.",
        markdown_table(["model", "layers", "images", "forward pass s", "accumulation s", "observe (one pass) s",
                        "ratio", "one pass per layer s", "one pass per layer / one pass"], rows),
    ])
    write_section("statistics", body)


if __name__ == "__main__":
    main()
