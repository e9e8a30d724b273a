"""Latency tables: the measured time of a layer's low-rank module at a grid of ranks, on the
layer's real input, interpolated between the grid points.

MACs miss measured time by up to 3x on CPUs (thin convolutions run at half the arithmetic
rate of wide ones), so rank allocation works from these tables instead. A table is keyed by
everything that changes it (backend, method, geometry, input shape with the batch, memory
format, dtype, device, threads, torch version) and cached in a JSON file that later runs reuse:
``$RECON_CACHE_DIR/latency.json``, default ``~/.cache/recon/latency.json``.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Callable
import os
import platform
from dataclasses import dataclass
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

GRID_POINTS = 8  # ranks timed per layer, spaced geometrically from 1 to the largest useful rank
REPEATS = 15  # alternating calls per module
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
    """Seconds per call of a dense layer and of its low-rank module at the timed ``ranks``."""

    dense: float
    ranks: tuple[int, ...]
    seconds: tuple[float, ...]

    def at(self, rank: int | np.ndarray) -> float | np.ndarray:
        """Seconds at ``rank``, linear between the timed ranks (flat beyond them)."""
        return np.interp(rank, self.ranks, self.seconds)


class LatencyCache:
    """Latency tables by key, read from and merged into a JSON file (None: this run only)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.tables: dict[str, LayerLatency] = {}
        self.added: dict[str, LayerLatency] = {}
        if path is not None and path.is_file():
            self.tables = _read(path)

    def get(self, key: str) -> LayerLatency | None:
        return self.tables.get(key)

    def put(self, key: str, table: LayerLatency) -> None:
        self.tables[key] = self.added[key] = table

    def save(self) -> None:
        """Merge the tables timed in this run into the file, under its lock (other runs may write too)."""
        if self.path is None or not self.added:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(self.path) as target:
            merged = {**(_read(target) if target.is_file() else {}), **self.added}
            payload = {key: [t.dense, list(t.ranks), list(t.seconds)] for key, t in merged.items()}
            replace_atomically(target, lambda temporary: temporary.write_text(json.dumps(payload, indent=0)))
        self.added = {}


def _read(path: Path) -> dict[str, LayerLatency]:
    """The tables of a cache file; an unreadable file counts as empty (it is only a cache)."""
    try:
        payload = json.loads(path.read_text())
        return {key: LayerLatency(float(d), tuple(int(r) for r in ranks), tuple(float(s) for s in seconds))
                for key, (d, ranks, seconds) in payload.items()}
    except (OSError, ValueError, TypeError, AttributeError):
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
    on ``backend``, from ``cache`` when it holds one; the dense layer and the modules at every
    grid rank are timed in one round-robin, so they share drift."""
    key = table_key(method, layer, inputs, channels_last, backend)
    if cache is not None and cache.get(key) is not None:
        return cache.get(key)
    geometry = method.geometry(layer)
    ranks = rank_grid(method.max_rank(geometry))
    modules = [random_module(method, geometry, rank, bias=layer.bias is not None).to(layer.weight.device,
                                                                                      layer.weight.dtype)
               for rank in ranks]
    dense, *seconds = latencies(backend)([layer, *modules], inputs, repeats, channels_last=channels_last)
    table = LayerLatency(dense, tuple(ranks), tuple(seconds))
    if cache is not None:
        cache.put(key, table)
    return table
