"""Wall-clock timing of modules side by side, and the inputs that layers see in a forward pass."""
from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from recon.errors import LayerError
from recon.inputs import Batch, device_of, run
from recon.inputs import channels_last as to_channels_last


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def feeds_for(modules: list, inputs: Batch | list[Batch]) -> list[Batch]:
    """One input per module: ``inputs`` itself for all, or the list given (one per module)."""
    feeds = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs] * len(modules)
    if len(feeds) != len(modules):
        raise ValueError(f"got {len(feeds)} inputs for {len(modules)} modules")
    return feeds


def round_robin(calls: list[Callable[[], Any]], repeats: int, warmup: int) -> list[float]:
    """Median seconds of each call, after ``warmup`` calls each, timed in turn (a, b, a, b, ...)."""
    for call in calls:
        for _ in range(warmup):
            call()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for call, samples in zip(calls, times):
            start = time.perf_counter()
            call()
            samples.append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in times]


def _synchronized(module: nn.Module, feed: Batch) -> Callable[[], Any]:
    """A call of ``module`` on ``feed`` that returns once the device has finished it."""
    where = device_of(feed)

    def call() -> Any:
        _synchronize(where)
        output = run(module, feed)
        _synchronize(where)
        return output
    return call


@torch.inference_mode()
def median_latencies(modules: list[nn.Module], inputs: torch.Tensor | list[torch.Tensor], repeats: int = 20,
                     warmup: int = 3, channels_last: bool = False) -> list[float]:
    """Median seconds per call of each module, timed round-robin so that they share drift.

    Calls alternate (a, b, a, b, ...) rather than running one module's repeats after the
    other's: a change of clock speed or a noisy neighbour then affects all of them alike,
    which keeps their ratio (the speedup) honest. ``inputs`` is one tensor for all modules
    or one per module (e.g. a channels_last copy). With ``channels_last``, copies of the
    modules and inputs in that memory format are timed (the faster layout on CPUs for dense
    and low-rank models alike).
    """
    feeds = feeds_for(modules, inputs)
    if channels_last:  # only 4-D inputs have that format (a Linear layer's do not)
        modules = [copy.deepcopy(module).to(memory_format=torch.channels_last) for module in modules]
        feeds = [to_channels_last(feed) for feed in feeds]
    return round_robin([_synchronized(module, feed) for module, feed in zip(modules, feeds)], repeats, warmup)


STABLE_RANGE = 0.10  # middle rounds of a ratio ranging over more than this fraction of their median: unstable


@dataclass(frozen=True)
class Spread:
    """Ratios of one comparison measured in separate rounds: the median and the range say how
    far one measurement on this machine can be trusted."""

    rounds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.rounds)

    @property
    def middle(self) -> tuple[float, ...]:
        """The rounds that decide, in order: all of them below four rounds; from four to seven
        all but the one farthest from the median (one round disturbed by another process does
        not decide, two do); from eight on, all but the quarter at either end."""
        ordered = sorted(self.rounds)
        if len(ordered) < 4:
            return tuple(ordered)
        if len(ordered) < 8:
            median = statistics.median(ordered)
            farthest = max(range(len(ordered)), key=lambda i: abs(ordered[i] - median))
            return tuple(ordered[:farthest] + ordered[farthest + 1:])
        cut = len(ordered) // 4
        return tuple(ordered[cut:len(ordered) - cut])

    @property
    def low(self) -> float:
        """The lower end of the middle rounds: what a decision near a threshold goes by."""
        return min(self.middle)

    @property
    def relative_range(self) -> float:
        """The range of the middle rounds over the median."""
        return (max(self.middle) - min(self.middle)) / self.median

    @property
    def stable(self) -> bool:
        return self.relative_range <= STABLE_RANGE

    def describe(self) -> str:
        """E.g. "1.52x (1.44-1.60, 5 rounds)", with a warning when the rounds scatter."""
        text = f"{self.median:.2f}x ({min(self.rounds):.2f}-{max(self.rounds):.2f}, {len(self.rounds)} rounds)"
        if not self.stable:
            text += (f"; timings unstable: the middle rounds range over {100 * self.relative_range:.0f}% of their "
                     "median; is another process using the CPU?")
        return text


def spread_until_stable(measure: Callable[[], Sequence[float]], min_rounds: int = 3,
                        max_rounds: int = 9) -> Spread:
    """The ratio first / second of ``measure()`` (seconds per call of two models timed side by
    side) in rounds, until after ``min_rounds`` the middle rounds range over at most
    ``STABLE_RANGE`` of their median, or ``max_rounds`` have run (then ``Spread.stable`` is False)."""
    ratios: list[float] = []
    while True:
        first, second = measure()[:2]
        ratios.append(first / second)
        spread = Spread(tuple(ratios))
        if len(ratios) >= max_rounds or (len(ratios) >= min_rounds and spread.stable):
            return spread


def round_latencies(modules: list[nn.Module], inputs: torch.Tensor, rounds: int = 5, repeats: int = 20,
                    channels_last: bool = False) -> list[list[float]]:
    """``median_latencies`` of ``modules`` in ``rounds`` separate rounds (one list per round),
    so that the ratios between them come with their scatter (``Spread``)."""
    return [median_latencies(modules, inputs, repeats, channels_last=channels_last) for _ in range(rounds)]


MEMORY_FORMATS = {"NCHW": False, "channels_last": True}


def latencies_by_format(modules: list[nn.Module], inputs: torch.Tensor, repeats: int = 20) -> dict[str, list[float]]:
    """``median_latencies`` of ``modules`` in each memory format, NCHW first."""
    return {name: median_latencies(modules, inputs, repeats, channels_last=flag) for name, flag in MEMORY_FORMATS.items()}


def capture_layer_inputs(model: nn.Module, names: list[str], example: Batch) -> dict[str, torch.Tensor]:
    """Each named submodule's input for one forward pass of ``example``."""
    captured: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(name).register_forward_pre_hook(
        lambda module, args, name=name: captured.__setitem__(name, args[0].detach().clone()))
        for name in names]
    try:
        with torch.inference_mode():
            run(model, example)
    finally:
        for hook in hooks:
            hook.remove()
    missing = [name for name in names if name not in captured]
    if missing:
        raise LayerError(f"layer(s) {', '.join(missing)} did not run in the forward pass of the example input")
    return captured
