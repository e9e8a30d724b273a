"""Fitting every conv of a 55-conv CIFAR ResNet-56 through the CLI, end to end.

    python -m benchmarks.resnet56_fit

Runs ``python -m recon.fit --model benchmarks.models:cifar_resnet56 --layer all --scheme 1
--bases 4 --mode filter --input-size 3x32x32`` as fresh processes and records their wall time
(process start, imports, tracing, compilation, solving, writing the file): once with an empty
JAX compilation cache (a first run on a new machine) and three times with the cache it left
(every later run).
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, markdown_table, write_section

COMMAND = ["recon.fit", "--model", "benchmarks.models:cifar_resnet56", "--layer", "all", "--scheme", "1", "--bases",
           "4", "--mode", "filter", "--input-size", "3x32x32"]


def seconds(out: Path, cache: Path) -> float:
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", *COMMAND, "--out", str(out)], check=True, capture_output=True,
                   env={**os.environ, "RECON_JAX_CACHE": str(cache)})
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    with tempfile.TemporaryDirectory() as folder:
        out, cache = Path(folder) / "r56.h5", Path(folder) / "cache"
        cold = seconds(out, cache)
        warm = [seconds(out, cache) for _ in range(3)]
    rows = [["empty cache (first run)", f"{cold:.1f}"],
            ["cache of the first run, median of 3", f"{statistics.median(warm):.1f} ({', '.join(f'{w:.1f}' for w in warm)})"]]
    print(rows, flush=True)
    write_section("resnet56-fit", "\n\n".join([
        "## All 55 convs of a CIFAR ResNet-56 through the CLI (`python -m benchmarks.resnet56_fit`)",
        f"Machine: {machine()}. `python -m {' '.join(COMMAND)}`, fresh processes, wall seconds end to end. "
        "Target: <= 5 s (27.9 s before batched solving and the compiled schedule).",
        markdown_table(["JAX compilation cache", "seconds"], rows)]))


if __name__ == "__main__":
    main()
