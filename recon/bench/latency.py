"""Latency tables: the measured time of a layer's low-rank module at a grid of ranks, on the
layer's real input, interpolated between the grid points.

MACs miss measured time by up to 3x on CPUs (thin convolutions run at half the arithmetic
rate of wide ones), so rank allocation works from these tables instead. A table is keyed by
everything that changes it (backend, method, geometry, input shape with the batch, memory
format, dtype, device, threads, torch version) and cached in a JSON file that later runs reuse:
``$RECON_CACHE_DIR/latency.json``, default ``~/.cache/recon/latency.json``.

A busy machine must not poison that file: a table is timed in ``ROUNDS`` separate round-robins
and keeps their scatter (``spread``) with the load average and the time it took; a table that
scatters more than ``UNSTABLE`` serves the run that timed it but is not cached. A cached table
is re-checked before each reuse (the dense layer against one mid rank, a few short rounds) and
timed again when the ratio has moved by more than ``DISAGREE`` plus its spread.
``python -m recon.cache`` lists and clears the file.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recon.bench import onnx_timing
from recon.bench.onnx_timing import onnxruntime_latencies
from recon.bench.placeholders import random_module
from recon.bench.timing import median_latencies
from recon.errors import ConfigError
from recon.io.atomic import exclusive, replace_atomically
from recon.methods import Method

LOG = logging.getLogger("recon")
GRID_POINTS = 8  # ranks timed per layer, spaced geometrically from 1 to the largest useful rank
REPEATS = 15  # alternating calls per module, over all rounds
ROUNDS = 3  # separate round-robins per table: their scatter is the table's spread
UNSTABLE = 0.25  # a table whose low-rank / dense ratios scatter more than this between rounds is not cached
CHECK_ROUNDS, CHECK_REPEATS = 3, 5  # the re-check of a cached table: dense against one mid rank
DISAGREE = 0.25  # re-time a cached table whose mid-rank ratio moved by more than this (plus its spread)
BACKENDS = ("torch", "onnxruntime")  # torch eager in the chosen memory format; onnxruntime's CPU provider


def check_backend(backend: str) -> None:
    """Refuse an unknown timing backend."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown latency backend {backend!r}; available: {', '.join(BACKENDS)}")


def latencies(backend: str) -> Callable[..., list[float]]:
    """The side-by-side timer of ``backend`` (signature of ``recon.bench.timing.median_latencies``)."""
    check_backend(backend)
    return median_latencies if backend == "torch" else onnxruntime_latencies


def _backend_name(backend: str) -> str:
    return "torch-eager" if backend == "torch" else f"onnxruntime-{onnx_timing.version()}"


def default_cache_path() -> Path:
    """Where latency tables are kept between runs."""
    folder = os.environ.get("RECON_CACHE_DIR") or Path.home() / ".cache" / "recon"
    return Path(folder) / "latency.json"


def rank_grid(max_rank: int, points: int = GRID_POINTS) -> list[int]:
    """Up to ``points`` ranks from 1 to ``max_rank``, geometrically spaced (both ends included)."""
    return sorted({int(r) for r in np.round(np.geomspace(1, max_rank, points))})


@dataclass(frozen=True)
class LayerLatency:
    """Seconds per call of a dense layer and of its low-rank module at the timed ``ranks``
    (medians over rounds); ``spread``: the largest relative range, over the ranks, of the
    low-rank / dense ratio between rounds; ``load``: the 1-minute load average when timed;
    ``timed_seconds``: how long timing the table took."""

    dense: float
    ranks: tuple[int, ...]
    seconds: tuple[float, ...]
    spread: float = 0.0
    load: float | None = None
    timed_seconds: float = 0.0

    def at(self, rank: int | np.ndarray) -> float | np.ndarray:
        """Seconds at ``rank``, linear between the timed ranks (flat beyond them)."""
        return np.interp(rank, self.ranks, self.seconds)

    @property
    def stable(self) -> bool:
        return self.spread <= UNSTABLE

    def to_json(self) -> dict:
        return {**asdict(self), "ranks": list(self.ranks), "seconds": list(self.seconds)}

    @classmethod
    def from_json(cls, entry: dict | list) -> "LayerLatency":
        """A table as ``to_json`` writes it (or as older caches did: [dense, ranks, seconds],
        of unknown spread, which the re-check before reuse judges)."""
        if isinstance(entry, list):
            dense, ranks, seconds = entry
            entry = {"dense": dense, "ranks": ranks, "seconds": seconds}
        table = cls(float(entry["dense"]), tuple(int(r) for r in entry["ranks"]),
                    tuple(float(s) for s in entry["seconds"]), float(entry.get("spread", 0.0)),
                    None if entry.get("load") is None else float(entry["load"]), float(entry.get("timed_seconds", 0.0)))
        values = [table.dense, *table.seconds, table.spread]
        if len(table.ranks) != len(table.seconds) or not table.ranks or not all(
                np.isfinite(v) and v >= 0 for v in values) or list(table.ranks) != sorted(set(table.ranks)):
            raise ValueError("not a latency table")
        return table


class LatencyCache:
    """Latency tables by key, read from and merged into a JSON file (None: this run only).

    ``put`` keeps a stable table for the file and an unstable one for this run only; ``drop``
    forgets a cached table that its re-check refuted, in the file too at ``save``."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.tables: dict[str, LayerLatency] = {}
        self.added: dict[str, LayerLatency] = {}
        self.dropped: set[str] = set()
        self.unstable: dict[str, LayerLatency] = {}
        self.checked: set[str] = set()
        if path is not None and path.is_file():
            self.tables = read_cache(path)

    def get(self, key: str) -> LayerLatency | None:
        return self.tables.get(key)

    def put(self, key: str, table: LayerLatency) -> None:
        self.tables[key] = table
        self.checked.add(key)
        if table.stable:
            self.added[key] = table
        else:
            self.unstable[key] = table
            self.added.pop(key, None)

    def drop(self, key: str) -> None:
        self.tables.pop(key, None)
        self.dropped.add(key)

    def save(self) -> None:
        """Merge the tables timed in this run into the file, under its lock (other runs may
        write too); a folder that cannot be written costs a warning, never the run."""
        if self.path is None or not (self.added or self.dropped):
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with exclusive(self.path) as target:
                merged = {**(read_cache(target) if target.is_file() else {}), **self.added}
                payload = {key: t.to_json() for key, t in merged.items() if key in self.added or key not in self.dropped}
                replace_atomically(target, lambda temporary: temporary.write_text(json.dumps(payload, indent=0)))
        except OSError as err:
            LOG.warning("warning: the latency cache %s cannot be written (%s); the tables serve this run only",
                        self.path, err)
        self.added, self.dropped = {}, set()


def unstable_warning(tables) -> str:
    """What to tell the user about latency tables that scattered too much to be cached."""
    tables = list(tables)
    worst = max(table.spread for table in tables)
    return (f"warning: timings unstable: {len(tables)} latency table(s) scattered by up to {100 * worst:.0f}% between "
            f"rounds (load average {os.getloadavg()[0]:.1f}); they serve this run only and are not cached. Is another "
            "process using the CPU? The rank allocation may miss its target; run again on a quiet machine")


def read_cache(path: Path) -> dict[str, LayerLatency]:
    """The tables of a cache file; a damaged or foreign file counts as empty, with a warning
    (it is only a cache: the next save rewrites it atomically)."""
    try:
        payload = json.loads(path.read_text())
        if not isinstance(payload, dict):
            raise ValueError("not a JSON object")
        return {str(key): LayerLatency.from_json(entry) for key, entry in payload.items()}
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as err:
        LOG.warning("warning: ignoring the latency cache %s, which is not a readable cache file (%s); "
                    "it is rewritten when tables are saved", path, err)
        return {}


@functools.lru_cache(maxsize=None)
def _processor(device: torch.device) -> str:
    """The processor's model name (tables from other hardware do not apply)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table_key(method: Method, layer: nn.Module, inputs: torch.Tensor, channels_last: bool,
              backend: str = "torch") -> str:
    """Everything a layer's measured latency depends on, as one string."""
    return json.dumps([_backend_name(backend), torch.__version__, torch.get_num_threads(), _processor(inputs.device),
                       method.name, repr(method.geometry(layer)), layer.bias is not None, list(inputs.shape),
                       "channels_last" if channels_last else "NCHW", str(inputs.dtype), inputs.device.type],
                      separators=(",", ":"))


def layer_latency(method: Method, layer: nn.Module, inputs: torch.Tensor, channels_last: bool = False,
                  cache: LatencyCache | None = None, repeats: int = REPEATS, backend: str = "torch") -> LayerLatency:
    """The latency table of ``method`` on ``layer`` for the batch ``inputs`` (its real input)
    on ``backend``: from ``cache`` when it holds one that its re-check confirms, else timed
    (the dense layer and the modules at every grid rank in one round-robin per round, so they
    share drift) and put in ``cache``."""
    key = table_key(method, layer, inputs, channels_last, backend)
    cached = None if cache is None else cache.get(key)
    if cached is not None:
        if key in cache.checked or _confirmed(cached, method, layer, inputs, channels_last, backend):
            cache.checked.add(key)
            return cached
        cache.drop(key)
    geometry = method.geometry(layer)
    ranks = rank_grid(method.max_rank(geometry))
    modules = [_module(method, layer, rank) for rank in ranks]
    start = time.perf_counter()
    rounds = [latencies(backend)([layer, *modules], inputs, max(1, repeats // ROUNDS), channels_last=channels_last)
              for _ in range(ROUNDS)]
    dense = statistics.median(times[0] for times in rounds)
    seconds = tuple(statistics.median(times[i] for times in rounds) for i in range(1, len(modules) + 1))
    ratios = [[times[i] / times[0] for times in rounds] for i in range(1, len(modules) + 1)]
    spread = max((max(r) - min(r)) / statistics.median(r) for r in ratios)
    table = LayerLatency(dense, tuple(ranks), seconds, spread, os.getloadavg()[0], time.perf_counter() - start)
    if cache is not None:
        cache.put(key, table)
    return table


def _module(method: Method, layer: nn.Module, rank: int) -> nn.Module:
    """A low-rank module of ``method`` at ``rank`` for ``layer``'s geometry, on its device and dtype."""
    return random_module(method, method.geometry(layer), rank, bias=layer.bias is not None).to(layer.weight.device,
                                                                                                 layer.weight.dtype)


def _confirmed(table: LayerLatency, method: Method, layer: nn.Module, inputs: torch.Tensor, channels_last: bool,
               backend: str) -> bool:
    """Whether the dense layer against the table's middle rank, timed now in a few short rounds,
    still shows the table's ratio (within ``DISAGREE`` plus the table's spread)."""
    rank = table.ranks[len(table.ranks) // 2]
    module = _module(method, layer, rank)
    measured = statistics.median(low / dense for dense, low in (
        latencies(backend)([layer, module], inputs, CHECK_REPEATS, channels_last=channels_last)
        for _ in range(CHECK_ROUNDS)))
    expected = float(table.at(rank)) / table.dense
    return abs(measured / expected - 1) <= DISAGREE + table.spread
