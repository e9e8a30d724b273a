"""``Timing``: how one compression times modules, the one setting that the guard, the rank
policy and the final measurement share."""
from __future__ import annotations

import dataclasses

from recon.bench.latency import check_backend
from recon.checks import check_flag, check_whole
from recon.errors import ConfigError

MAX_TIMING_BATCH = 4096  # the largest timing batch (a larger one only allocates more)
WHOLE_MODEL_REPEATS = 50  # timed calls per model when a whole model is measured


@dataclasses.dataclass(frozen=True)
class Timing:
    """How one compression times modules: a batch of ``batch`` inputs (the example cut or
    cycled to it), in the channels_last memory format or not, on ``backend`` ("torch" eager, or
    "onnxruntime" for the rank policy's tables and model timings), ``repeats`` calls per
    whole-model measurement."""

    batch: int = 32
    channels_last: bool = False
    backend: str = "torch"
    repeats: int = WHOLE_MODEL_REPEATS

    def __post_init__(self) -> None:
        check_whole("Timing.batch", self.batch, 1)
        if self.batch > MAX_TIMING_BATCH:
            raise ConfigError(f"Timing.batch must be at most {MAX_TIMING_BATCH}, got {self.batch}")
        check_flag("Timing.channels_last", self.channels_last)
        check_backend(self.backend)
        check_whole("Timing.repeats", self.repeats, 1)
        if self.backend == "onnxruntime" and self.channels_last:
            raise ConfigError("channels_last is a torch memory format; the onnxruntime backend chooses its own layouts")

    @property
    def layout(self) -> str:
        """The memory format as reports name it."""
        return "channels_last" if self.channels_last else "NCHW"
