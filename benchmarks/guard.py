"""The never-slower guard through the CLI, then an independent re-measurement of what it kept.

    python -m benchmarks.guard

Fits every conv of the bundled model with ``--guard --channels-last`` twice: Scheme 1 with 4
bases (slower than dense on most layers here) and Scheme 2 at about 4x fewer MACs per layer;
then ``python -m recon.evaluate`` times each kept layer against its dense conv again, in both
memory formats. The target: no kept layer slower than dense (ratio >= 0.95, allowing noise).
"""
from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

from benchmarks.common import machine, write_section
from benchmarks.target_speedup import run_command
from recon.cli.evaluate import main as evaluate_main

LAYERS = ["--layer", "conv2", "--layer", "conv3", "--layer", "conv4", "--layer", "conv5"]
SETTINGS = [["--scheme", "1", "--bases", "4"], ["--scheme", "2", "--bases", "conv2=48,conv3=52,conv4=64,conv5=64"]]


def main(argv: list[str] | None = None) -> None:
    parts = ["## Never-slower guard (`python -m benchmarks.guard`)", f"Machine: {machine()}."]
    with tempfile.TemporaryDirectory() as folder:
        for index, setting in enumerate(SETTINGS):
            out = Path(folder) / f"guard{index}.h5"
            command = [*LAYERS, *setting, "--mode", "filter", "--guard", "--channels-last"]
            code, fit_output, _ = run_command(["recon.fit", *command, "--out", str(out)])
            guard_lines = "\n".join(line for line in fit_output.splitlines() if line.startswith("guard "))
            parts.append(f"`python -m recon.fit {' '.join(command)}` (exit {code}), the guard's decisions:\n\n"
                         f"```\n{guard_lines}\n```")
            if not out.exists():
                parts.append("No layer was kept, so nothing to re-measure.")
                continue
            stream = io.StringIO()
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(io.StringIO()):
                evaluate_main(["--bases", str(out), "--limit", "1000", "--repeats", "50"])
            parts.append(f"Re-measured by `python -m recon.evaluate --bases FILE --limit 1000 --repeats 50`:\n\n"
                         f"```\n{stream.getvalue().strip()}\n```")
            print(parts[-2], parts[-1], sep="\n", flush=True)
    write_section("guard", "\n\n".join(parts))


if __name__ == "__main__":
    main()
