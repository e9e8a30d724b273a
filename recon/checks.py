"""Checks of plain setting values (whole numbers, flags) that every layer of recon shares, so
that one wording says what was wrong and what is allowed."""
from __future__ import annotations

from typing import Any

import numpy as np

from recon.errors import ConfigError


def check_whole(label: str, value: Any, minimum: int, *, bits: int | None = None, optional: bool = False) -> None:
    """ConfigError unless ``value`` is a whole number >= ``minimum`` (and below 2**bits when
    ``bits`` is given; None passes when ``optional``)."""
    if optional and value is None:
        return
    top = None if bits is None else 2 ** bits
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum or (
            top is not None and value >= top):
        allowed = f">= {minimum}" if bits is None else f"in {minimum}..2**{bits}-1"
        raise ConfigError(f"{label} must be a whole number {allowed}{' or None' if optional else ''}, got {value!r}")


def check_flag(label: str, value: Any) -> None:
    """ConfigError unless ``value`` is True or False."""
    if not isinstance(value, bool):
        raise ConfigError(f"{label} must be True or False, got {value!r}")
