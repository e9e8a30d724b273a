"""Data reconstruction on statistics that cannot see every input direction: before and after
the ridge toward the original weights.

    python -m benchmarks.degenerate

The issue's case: conv1 of a CIFAR ResNet-56 (benchmarks/models.py; seeded random weights,
not the pretrained ones of the report) fitted with Scheme 2, data mode, on Fashion-MNIST
training images resized to 32x32 and copied into three channels (2,000 images): the input
covariance of conv1's 27-dimensional patches has rank 9. Reports ||W_hat - W|| / ||W||, the
output variance lost and the statistics' diagnostics, with ridge 0 (the plain data objective)
and the default ridge; layer1.0.conv1 at 8 bases beside it.
"""
from __future__ import annotations

import torch.nn.functional as F

from benchmarks.common import machine, markdown_table, write_section
from benchmarks.models import cifar_resnet56
from recon import SolverOptions, compress, data
from recon.errors import FitError


class GreyInThreeChannels:
    """Fashion-MNIST training images, 32x32, the grey channel copied three times."""

    def __iter__(self):
        for images, _ in data.loader("train", batch_size=250, limit=2000):
            yield F.interpolate(images, size=32, mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)


def main(argv: list[str] | None = None) -> None:
    model = cifar_resnet56()
    rows = []
    for layer, rank in (("conv1", 6), ("layer1.0.conv1", 8)):
        for ridge in (0.0, SolverOptions.ridge):
            try:
                record = compress(model, GreyInThreeChannels(), layers=layer, ranks=rank,
                                  solver=SolverOptions(ridge=ridge), progress=False).layers[layer]
            except FitError as err:
                rows.append([layer, rank, f"{ridge:g}", f"failed: {err}", "", "", "", ""])
                continue
            stats = record.statistics
            rows.append([layer, rank, f"{ridge:g}", f"{record.filter_energy_lost ** 0.5:.3f}",
                         f"{record.output_variance_lost:.4f}", f"{stats.effective_rank:.1f} of {stats.dim}",
                         f"{stats.unseen}", f"{stats.condition:.3g}"])
            print(rows[-1], flush=True)
    body = "\n\n".join([
        "## Degenerate statistics: the ridge toward the original weights (`python -m benchmarks.degenerate`)",
        f"Machine: {machine()}. CIFAR ResNet-56 with seeded random weights; 2,000 Fashion-MNIST training images "
        "resized to 32x32 and copied into three channels; Scheme 2, data mode. Targets for conv1 at 6 bases: "
        "||W_hat - W|| / ||W|| <= 1.0 with output variance lost <= 0.01.",
        markdown_table(["layer", "bases", "ridge", "||W_hat - W|| / ||W||", "output variance lost",
                        "effective rank", "unseen directions", "condition"], rows),
    ])
    write_section("degenerate", body)


if __name__ == "__main__":
    main()
