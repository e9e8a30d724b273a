"""The --target-speedup check of the CLI itself, in both memory formats.

    python -m benchmarks.target_speedup [--target 2.5]

Runs ``python -m recon.fit --layer all --target-speedup T --asymmetric --eval`` (data
reconstruction, no fine-tuning) once timing in channels_last and once in NCHW, and records
what the CLI printed (rank search rounds, per-layer table, measured speedup, test accuracy).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

from benchmarks.common import machine, write_section
from recon.cli.fit import main as fit_main


def run_cli(arguments: list[str]) -> tuple[int, str]:
    """Exit code and everything the CLI wrote (stdout and stderr, progress bars left out)."""
    stream = io.StringIO()
    with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
        code = fit_main(arguments)
    lines = [line for line in stream.getvalue().splitlines() if line.strip() and "%|" not in line]
    return code, "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.target_speedup", description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=2.5)
    args = parser.parse_args(argv)
    parts = [f"## `--target-speedup {args.target:g}` through the CLI (`python -m benchmarks.target_speedup`)",
             f"Machine: {machine()}."]
    with tempfile.TemporaryDirectory() as folder:
        for layout in (["--channels-last"], []):
            command = ["--layer", "all", "--target-speedup", f"{args.target:g}", "--asymmetric", "--eval", *layout]
            code, output = run_cli([*command, "--out", str(Path(folder) / f"target{len(layout)}.h5")])
            print(output, flush=True)
            parts.append(f"`python -m recon.fit {' '.join(command)}` (exit {code}):\n\n```\n{output}\n```")
    write_section("target-speedup", "\n\n".join(parts))


if __name__ == "__main__":
    main()
