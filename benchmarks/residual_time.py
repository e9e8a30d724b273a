"""Wall time of the whole residual-network pipeline: ``compress`` with ``TargetSpeedup(2)``,
BatchNorm folded, asymmetric, then block reconstruction, on 1,024 real CIFAR-10 images.

    python -m benchmarks.residual_time [--target 2] [--calibration 1024]

Rows: the published ResNet-20 and a ResNet-56 of the same family with seeded random weights
(timing only: no accuracy is claimed for it), each with the activations carried block by block
(``recon.pipeline.propagate``, the default) and, for ResNet-20, with both models run from the
input for every layer and block (the fallback for models torch.fx cannot trace), side by side.
Targets: <= 120 s for ResNet-20, <= 300 s for ResNet-56, on 2 cores.
"""
from __future__ import annotations

import argparse
import time

import torch

from benchmarks import cifar
from benchmarks.common import machine, markdown_table, write_section
from recon import TargetSpeedup, Timing, compress
from recon.pipeline import propagate
from recon.zoo.cifar import cifar_resnet


def _seconds(model: torch.nn.Module, data: cifar.Cifar, target: float) -> tuple[float, float, str]:
    """(compress seconds, block reconstruction seconds, outcome) of one pipeline run."""
    start = time.perf_counter()
    policy = TargetSpeedup(target, cache=False)
    result = compress(model, data.batches(), layers="all", ranks=policy, fold_batchnorm=True, mode="asymmetric",
                      example_input=data.calibration[:32], timing=Timing(batch=32, channels_last=True),
                      progress=False)
    middle = time.perf_counter()
    result.reconstruct_blocks(data.batches(), progress=False)
    outcome = result.outcome
    return (middle - start, time.perf_counter() - middle,
            f"target {outcome.target:g}x {'met' if outcome.met else 'missed'}: measured {outcome.measured:.2f}x")


def _full_passes(self, block: str) -> None:
    raise propagate.Untraceable("full passes timed by the benchmark")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.residual_time", description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=2.0)
    parser.add_argument("--calibration", type=int, default=1024)
    args = parser.parse_args(argv)
    data = cifar.load(args.calibration)
    torch.manual_seed(0)
    runs = [("ResNet-20 (published)", data.model, "carried block by block"),
            ("ResNet-20 (published)", data.model, "full passes per layer and block"),
            ("ResNet-56 (random weights)", cifar_resnet(56), "carried block by block")]
    rows = []
    for label, model, how in runs:
        carried = propagate.Propagation.calls
        if how.startswith("full"):  # what a model torch.fx cannot trace gets
            propagate.Propagation.calls = _full_passes
        try:
            fit, blocks, outcome = _seconds(model, data, args.target)
        finally:
            propagate.Propagation.calls = carried
        rows.append([label, how, f"{fit:.0f}", f"{blocks:.0f}", f"{fit + blocks:.0f}", outcome])
        print(rows[-1], flush=True)
    write_section("residual-time", "\n\n".join([
        "## Residual-network pipeline wall time (`python -m benchmarks.residual_time`)",
        f"Machine: {machine()}. `compress(ranks=TargetSpeedup({args.target:g}), fold_batchnorm=True, "
        "mode='asymmetric', timing=Timing(batch=32, channels_last=True))` then `reconstruct_blocks`, "
        f"{args.calibration:,} real CIFAR-10 training images, Scheme 2. "
        "ResNet-56 has seeded random weights (timing only). Targets: ResNet-20 <= 120 s, ResNet-56 <= 300 s. One run.",
        markdown_table(["model", "approximated inputs", "compress s", "block reconstruction s", "total s",
                        "outcome"], rows)]))


if __name__ == "__main__":
    main()
