"""The ResNet-20 frontier: test accuracy drop against measured speedup (against the dense model
with its BatchNorms folded), one curve per step of the residual pipeline.

    python -m benchmarks.resnet20_frontier

Reads the rows ``benchmarks.resnet20`` wrote (``benchmarks/resnet20-*.json``, one file per
output bound) and draws ``benchmarks/frontier-resnet20.png``; a step's points are its rows at
every target and bound, joined in order of speedup. Also writes the section
``frontier-resnet20`` of RESULTS.md, which notebook 02 shows with the other frontiers.
"""
from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import write_section
from benchmarks.resnet20 import FOLDER, STEPS

PLOT = FOLDER / "frontier-resnet20.png"


def rows() -> list[dict]:
    """Every row of every ``resnet20-*.json``."""
    files = sorted(FOLDER.glob("resnet20-*.json"))
    if not files:
        raise SystemExit("no benchmarks/resnet20-*.json: run python -m benchmarks.resnet20 first")
    return [row for path in files for row in json.loads(Path(path).read_text())["rows"]]


def main(argv: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = rows()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for step in STEPS:
        points = sorted((row["speedup_folded"], 100 * row["drop"]) for row in found if row["step"] == step)
        if points:
            axes.plot(*zip(*points), marker="o", label=step)
    axes.axhline(-1.0, color="grey", linestyle=":", linewidth=1)
    axes.axvline(1.5, color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel("measured speedup vs dense with BatchNorms folded (batch 32, channels_last, 2 cores)")
    axes.set_ylabel("test accuracy change (points)")
    axes.set_title("Published ResNet-20, real CIFAR-10 (846 test images)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(PLOT, dpi=110)
    print(f"wrote {PLOT}")
    bounds = sorted(path.stem.removeprefix("resnet20-") for path in FOLDER.glob("resnet20-*.json"))
    write_section("frontier-resnet20", "\n\n".join([
        "## Frontier of the published ResNet-20 on real CIFAR-10 (`python -m benchmarks.resnet20_frontier`)",
        f"Test accuracy change against the speedup measured against the dense model with its BatchNorms folded "
        f"(median of the rounds), one curve per step, from the rows of `benchmarks.resnet20` with "
        f"`--max-output-change` {', '.join(bounds)} (sections `resnet20-*`). Dotted lines: the issue's target "
        "(1.5x at -1 point). Plot: `frontier-resnet20.png`."]))


if __name__ == "__main__":
    main()
