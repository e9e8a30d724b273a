"""Writes that never damage what is already on disk, and never lose another writer's work.

``replace_atomically`` writes to a hidden temporary file beside the target and moves it over
the target with ``os.replace``: readers see the old file or the new one, never a half
written one. A symbolic link is followed, so its target is what gets updated. The new file
keeps the old one's permissions (a fresh one gets the umask's), not the 0600 of a temporary
file. ``exclusive`` serialises read-modify-write cycles of cooperating writers with an
advisory lock on a hidden ``.NAME.lock`` beside the target; holding it, temporary files that
a killed writer left behind are removed.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def resolve(path: str | os.PathLike) -> Path:
    """The file a write to ``path`` must update: symbolic links followed."""
    return Path(os.path.realpath(path))


def _temporary_prefix(target: Path) -> str:
    return f".{target.name}."


def _new_file_mode(target: Path) -> int:
    if target.exists():
        return stat.S_IMODE(target.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def exclusive(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the advisory write lock of ``path`` (resolved); yields the resolved path."""
    target = resolve(path)
    with open(target.parent / f".{target.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for stale in target.parent.glob(f"{_temporary_prefix(target)}*.tmp"):
                stale.unlink(missing_ok=True)
            yield target
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def replace_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary_path)`` and move the result over ``path`` (resolved)."""
    target = resolve(path)
    handle, temporary = tempfile.mkstemp(prefix=_temporary_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, _new_file_mode(target))
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target
