"""The --target-speedup check of the CLI itself, timed end to end.

    python -m benchmarks.target_speedup [--model fmnist-alexnet] [--target 2.5] [--layouts both|channels_last|onnxruntime]

Runs ``python -m recon.fit --model M --layer all --target-speedup T --asymmetric
[--channels-last | --latency-backend onnxruntime]`` (data reconstruction, no fine-tuning) as
a fresh process and records its wall time (process start, imports, compilation included) and
what it printed (rank allocation timings, per-layer table, measured speedup); then ``python -m
recon.evaluate --bases FILE`` for test accuracy and latency of the result in torch in both
memory formats.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, write_section

LAYOUTS = {"both": (["--channels-last"], []), "channels_last": (["--channels-last"],),
           "onnxruntime": (["--latency-backend", "onnxruntime"],)}  # options of recon.fit for each run


def run_command(arguments: list[str]) -> tuple[int, str, float]:
    """Exit code, everything it printed (progress bars left out) and wall seconds of ``python -m ...``."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", *arguments], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    text = (done.stderr + done.stdout).replace("\r", "\n")
    lines = [line for line in text.splitlines() if line.strip() and "%|" not in line and "batch/s" not in line
             and "s/batch" not in line]
    return done.returncode, "\n".join(lines), seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.target_speedup", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fmnist-alexnet", help="bundled model")
    parser.add_argument("--target", type=float, default=2.5)
    parser.add_argument("--layouts", choices=tuple(LAYOUTS), default="both",
                        help="time in channels_last and NCHW, in channels_last only, or in onnxruntime")
    args = parser.parse_args(argv)
    parts = [f"## {args.model}: `--target-speedup {args.target:g}` through the CLI "
             f"(`python -m benchmarks.target_speedup --model {args.model} --target {args.target:g} "
             f"--layouts {args.layouts}`)",
             f"Machine: {machine()}."]
    with tempfile.TemporaryDirectory() as folder:
        for index, layout in enumerate(LAYOUTS[args.layouts]):
            out = str(Path(folder) / f"target{index}.h5")
            command = ["recon.fit", "--model", args.model, "--layer", "all", "--target-speedup", f"{args.target:g}",
                       "--asymmetric", *layout]
            code, output, seconds = run_command([*command, "--out", out])
            print(output, f"{seconds:.1f} s", sep="\n", flush=True)
            parts.append(f"`python -m {' '.join(command)}` (exit {code}, **{seconds:.0f} s** end to end):\n\n"
                         f"```\n{output}\n```")
            code, output, _ = run_command(["recon.evaluate", "--model", args.model, "--bases", out, "--repeats", "50"])
            print(output, flush=True)
            parts.append(f"`python -m recon.evaluate --bases FILE --repeats 50` (exit {code}):\n\n```\n{output}\n```")
    suffix = "-onnxruntime" if args.layouts == "onnxruntime" else ""
    write_section(f"target-speedup-{args.model}{suffix}", "\n\n".join(parts))


if __name__ == "__main__":
    main()
