"""The errors recon expects to happen: bad arguments, bad files, bad data, failed fits.

Every one derives from ``ReconError``; the CLIs print these as one line and exit 2. Anything
else that escapes is a bug and keeps its traceback. The subclasses also derive from the
built-in error a caller would naturally catch (``ValueError``, ``RuntimeError``).
"""
from __future__ import annotations


class ReconError(Exception):
    """Base of every error recon raises on purpose."""


class ConfigError(ReconError, ValueError):
    """An argument or option is out of range or contradicts another one."""


class LayerError(ReconError, ValueError):
    """A named layer is missing, is not the kind expected, or cannot be replaced."""


class BasesFileError(ReconError, ValueError):
    """A bases file is missing, unreadable, of another format or version, or inconsistent."""


class DataError(ReconError, RuntimeError):
    """Data is missing, malformed, or not what the model takes."""


class FitError(ReconError, RuntimeError):
    """A solver or decomposition failed for a layer (diverged, non-finite, no better than zero)."""
