"""The per-layer table of fitted layers, as the CLIs print it: of a compression, or of the
records of any bases file."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from recon.record import LayerRecord

MAX_OUTPUT_LOSS = 0.3  # compress's default bound on a layer's output variance lost (flagged with ! above it)

COLUMNS = ("layer", "method", "rank", "mode", "weight energy lost", "output var. lost", "eff. rank", "patches/dim",
           "MACs speedup", "measured", "fit s")


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _row(record: LayerRecord, max_output_loss: float) -> tuple[str, ...]:
    stats = record.statistics
    lossy = "!" if record.output_variance_lost > max_output_loss else ""
    measured = "-" if record.guard is None else f"{record.guard.speedup:.2f}x"
    speedup = "-" if math.isnan(record.theoretical_speedup) else f"{record.theoretical_speedup:.2f}x"
    return (record.name, record.method, str(record.rank), record.mode if record.kept else "dense kept",
            _number(record.filter_energy_lost), _number(record.output_variance_lost) + lossy,
            "-" if stats is None else f"{stats.effective_rank:.0f}/{stats.dim}",
            "-" if stats is None else f"{stats.patches_per_dim:.0f}", speedup, measured, _number(record.fit_seconds, 2))


def table(records: Iterable[LayerRecord], max_output_loss: float = MAX_OUTPUT_LOSS, dense_layers: Sequence[str] = (),
          skipped: Mapping[str, str] | None = None, method: str = "") -> str:
    """One row per fitted layer, then what needs the reader's attention.

    "weight energy lost" = ||W_hat - W||^2 / ||W||^2, "output var. lost" = the fraction of
    the layer's output variance not reconstructed on the statistics (! above the
    ``max_output_loss`` setting); "eff. rank" = the input covariance's effective rank of D,
    "patches/dim" = patches per input dimension behind it; "MACs speedup" = dense / low-rank
    multiply-adds on the layer's input shape; "measured" = the guard's timing. Then the layers
    the rank policy kept dense (``dense_layers``) and those ``method`` could not replace
    (``skipped``: name -> why).
    """
    records = list(records)
    rows = [_row(record, max_output_loss) for record in records]
    widths = [max(len(header), *(len(row[i]) for row in rows)) if rows else len(header)
              for i, header in enumerate(COLUMNS)]
    line = lambda cells: "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))
    lines = [line(COLUMNS), "-" * len(line(COLUMNS))] + [line(row) for row in rows]
    lossy = [f"{r.name} ({r.output_variance_lost:.2f})" for r in records if r.output_variance_lost > max_output_loss]
    if lossy:
        lines.append(f"! output variance lost above {max_output_loss:g}: {', '.join(lossy)}")
    dense = [f"{r.name} ({r.dense_reason})" for r in records if not r.kept]
    if dense:
        lines.append(f"dense layer kept instead: {'; '.join(dense)}")
    if any(record.input_shape is None for record in records):
        lines.append("MACs: no data and no input_size were given, so layer input shapes are unknown")
    if dense_layers:
        lines.append(f"kept dense (the rank policy found they do not pay): {', '.join(dense_layers)}")
    if skipped:
        lines.append(f"not replaceable by {method}: " + "; ".join(f"{name} ({why})" for name, why in skipped.items()))
    return "\n".join(lines)
