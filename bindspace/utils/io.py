"""Writes that never leave a truncated file in place of a good one: write a temporary file, then rename."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


class DiskFullError(OSError):
    """A write failed because its device is full (``errno.ENOSPC``); the message names the file."""


# Less than this left on the device after a failed write: the write failed for want of space (torch's
# zip writer reports a full disk as "unexpected pos" RuntimeErrors, not as ENOSPC).
FULL_BELOW_BYTES = 1 << 20


def free_bytes(folder: str | Path) -> int:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, and rename it over ``path``.

    The rename is atomic on POSIX, so readers see the old file or the new one, never half of one.
    A failed write removes its temporary file; one that failed for want of space raises
    :class:`DiskFullError` naming ``path`` (the file it would have replaced is untouched).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as err:
        full = isinstance(err, Exception) and _device_full(path.parent, err)  # measured before the unlink frees it
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise DiskFullError(errno.ENOSPC, f"no space left on the device writing {path}", str(path)) from err
        raise
    return path


def _device_full(folder: Path, err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return free_bytes(folder) < FULL_BELOW_BYTES
    except OSError:
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_safetensors(path: str | Path) -> tuple[dict[str, str], dict[str, Any]]:
    """``(metadata, tensors)`` of a safetensors file: plain tensors and strings, nothing executed.

    Raises:
        ValueError: an unreadable or malformed file, with the reason's first line (callers name the file).
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise ValueError(str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    return meta, tensors
