"""The per-layer table of a compression, as the CLI prints it."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from recon.pipeline.compress import Compression

COLUMNS = ("layer", "method", "rank", "mode", "weight energy lost", "output var. lost", "MACs speedup",
           "measured", "fit s")


def _number(value: float, digits: int = 4) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def table(result: "Compression") -> str:
    """One row per fitted layer, then the layers left dense and why.

    "weight energy lost" = ||W_hat - W||^2 / ||W||^2, "output var. lost" = the fraction of
    the layer's output variance not reconstructed on the statistics; "MACs speedup" = dense /
    low-rank multiply-adds on the layer's input shape; "measured" = the guard's timing.
    """
    rows = []
    for record in result.layers.values():
        measured = "-" if record.guard is None else (
            f"{record.guard.speedup:.2f}x" + ("" if record.kept else " dense kept"))
        speedup = "-" if math.isnan(record.theoretical_speedup) else f"{record.theoretical_speedup:.2f}x"
        rows.append((record.name, record.method, str(record.rank), record.mode, _number(record.filter_energy_lost),
                     _number(record.output_variance_lost), speedup, measured, _number(record.fit_seconds, 2)))
    widths = [max(len(header), *(len(row[i]) for row in rows)) if rows else len(header)
              for i, header in enumerate(COLUMNS)]
    line = lambda cells: "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))
    lines = [line(COLUMNS), "-" * len(line(COLUMNS))] + [line(row) for row in rows]
    if any(record.input_shape is None for record in result.layers.values()):
        lines.append("MACs: no data and no input_size were given, so layer input shapes are unknown")
    if result.dense_layers:
        lines.append(f"kept dense (the rank policy found they do not pay): {', '.join(result.dense_layers)}")
    if result.skipped:
        lines.append("not replaceable by " + result.config.method + ": "
                     + "; ".join(f"{name} ({why})" for name, why in result.skipped.items()))
    return "\n".join(lines)
