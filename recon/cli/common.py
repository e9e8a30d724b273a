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
from recon.methods.base import SEED_BITS
from recon.bench.settings import MAX_TIMING_BATCH
from recon.pipeline.compress import check_device

INTERRUPTED = "interrupted: files written before were not damaged"


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    return _bounded_int(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    return _bounded_int(text, 0)


def whole_number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """argparse type: a whole number in minimum..maximum (no upper bound when None)."""
    return lambda text: _bounded_int(text, minimum, maximum)


def seed(text: str) -> int:
    """argparse type: a random seed, 0..2**32-1."""
    return _bounded_int(text, 0, 2 ** SEED_BITS - 1)


def timing_batch(text: str) -> int:
    """argparse type: the batch size of a timing, 1..MAX_TIMING_BATCH (a larger one only allocates more)."""
    return _bounded_int(text, 1, MAX_TIMING_BATCH)


def _bounded_int(text: str, minimum: int, maximum: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if maximum is not None and not minimum <= value <= maximum:
        raise argparse.ArgumentTypeError(f"must be in {minimum}..{maximum}, got {value}")
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
    """argparse type: a torch device that exists here (``recon.pipeline.compress.check_device``)
    and can hold a tensor in this torch build."""
    try:
        return _usable(check_device(text))
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _usable(where: torch.device) -> torch.device:
    """``where``, once a one-element tensor was made there; a ConfigError when it cannot be."""
    try:
        torch.zeros(1, device=where)
    except Exception as err:  # each backend this build lacks fails in its own way
        reason = str(err).splitlines()[0].split(". ")[0] if str(err) else ""
        raise ConfigError(f"device {str(where)!r} cannot be used here ({type(err).__name__}: {reason}); use cpu "
                          "or a cuda device this machine has") from None
    return where


def enable_compilation_cache() -> Path | None:
    """Keep compiled solvers on disk between runs (JAX's persistent compilation cache), in
    $RECON_JAX_CACHE or ~/.cache/recon/jax (private to the user: a compilation cache is code
    that will run: a folder others can write to is not used, with a warning);
    RECON_JAX_CACHE=off disables it. The first run of a shape compiles, later runs load."""
    import jax

    setting = os.environ.get("RECON_JAX_CACHE", "")
    if setting.lower() == "off":
        return None
    folder = Path(setting) if setting else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "recon" / "jax"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        status = folder.stat()
    except OSError:
        return None
    if status.st_mode & 0o022 or status.st_uid != os.getuid():
        logging.getLogger("recon").warning(
            "warning: the JAX compilation cache %s is not private (%s, mode %o): others could plant code that later runs "
            "load, so it is not used; make it yours with chmod 700, or set RECON_JAX_CACHE to another folder",
            folder, "owned by another user" if status.st_uid != os.getuid() else "writable by others",
            status.st_mode & 0o777)
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
