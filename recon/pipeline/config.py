"""``CompressConfig``: how a compression was made, stored as JSON with every layer it fitted,
so a bases file says how to make it again."""
from __future__ import annotations

import dataclasses
from typing import Any

from recon.methods import SolverOptions


@dataclasses.dataclass(frozen=True)
class CompressConfig:
    """The settings of one ``recon.compress`` call (``ranks`` describes the rank policy)."""

    method: str
    mode: str
    asymmetric: bool
    ranks: dict[str, Any]
    samples: int | None
    patches_per_image: int | None
    guard: bool
    min_speedup: float
    channels_last: bool
    timing_batch: int
    max_output_loss: float
    dense_when_lossy: bool
    solver: SolverOptions
    fold_batchnorm: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every setting."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return {**values, "solver": self.solver.to_dict()}
