"""What every command shares: argument types, logging to stderr, and turning expected errors
into one line and exit status 2 (a bug keeps its traceback)."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from recon.errors import ConfigError, ReconError
from recon.pipeline.compress import check_device

INTERRUPTED = "interrupted: files written before were not damaged"


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    return _bounded_int(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    return _bounded_int(text, 0)


def _bounded_int(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def nonnegative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    value = _number(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _number(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def input_size(text: str) -> tuple[int, ...]:
    """argparse type: one sample's shape, channels x height x width, e.g. 3x32x32."""
    try:
        size = tuple(int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C x H x W such as 3x32x32, got {text!r}") from None
    if len(size) != 3 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive sizes C x H x W such as 3x32x32, got {text!r}")
    return size


def device(text: str) -> torch.device:
    """argparse type: a torch device that exists here (``recon.pipeline.compress.check_device``)."""
    try:
        return check_device(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def enable_compilation_cache() -> Path | None:
    """Keep compiled solvers on disk between runs (JAX's persistent compilation cache), in
    $RECON_JAX_CACHE or ~/.cache/recon/jax (private to the user: a compilation cache is code
    that will run); RECON_JAX_CACHE=off disables it. The first run of a shape compiles, later
    runs load."""
    import jax

    setting = os.environ.get("RECON_JAX_CACHE", "")
    if setting.lower() == "off":
        return None
    folder = Path(setting) if setting else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "recon" / "jax"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return folder


def _terminate(signum: int, frame) -> None:
    raise KeyboardInterrupt


def run(main: Callable[[], int], interrupted: str = INTERRUPTED) -> int:
    """Run a command body: log to stderr, SIGTERM unwinds like Ctrl-C (so temporary files are
    removed), expected errors print one line and return 2."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("recon")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return main()
    except ReconError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        logger.removeHandler(handler)
