"""Writes that never leave a truncated file in place of a good one: write a temporary file, then rename."""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import stat
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
    fd, tmp, held = _locked_temporary(path)
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
    finally:
        if held is not None:
            os.close(held)
    return path


def _locked_temporary(path: Path) -> tuple[int, str, int | None]:
    """A new temporary beside ``path``: its fd, its name, and a second fd holding an ``flock`` on it until the
    rename is done (its own open file, as closing the first must not release it). The kernel drops the lock
    when the process dies, however it dies: :func:`remove_stale_temporaries` takes only unlocked ones.

    On a file system without ``flock`` (Lustre mounted without ``-o flock``, some FUSE mounts) the write goes
    ahead unlocked (None): atomic all the same, and :func:`remove_stale_temporaries` leaves what it cannot
    lock in place.
    """
    while True:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        held = os.open(tmp, os.O_RDONLY)
        try:
            fcntl.flock(held, fcntl.LOCK_EX)  # a fresh file: free, unless a cleaner just took it to remove it
        except OSError as err:
            if err.errno not in _NO_LOCKS:
                os.close(held)
                os.close(fd)
                Path(tmp).unlink(missing_ok=True)
                raise
            os.close(held)
            return fd, tmp, None
        if os.fstat(held).st_nlink:
            return fd, tmp, held
        os.close(held)  # removed between mkstemp and flock by remove_stale_temporaries (it looked unlocked)
        os.close(fd)


# flock is not offered here: the file system's answer, not a lock held by anyone.
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporaries :func:`atomic_write` left beside ``path`` when its process died mid-write.

    Only ``.<name>.<8 mkstemp characters>.tmp`` regular files that no live process holds locked: a
    concurrent write of the same file keeps its lock until its rename, so it is never disturbed. Returns
    what was removed.
    """
    path = Path(path)
    removed = []
    for tmp in sorted(path.parent.glob(f".{glob.escape(path.name)}.????????.tmp")):
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue  # gone, a symlink, unreadable: not ours to remove
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live write (EWOULDBLOCK), or no flock on this file system: nothing tells it is stale
            held = os.fstat(fd)
            try:
                named = os.stat(tmp, follow_symlinks=False)
            except FileNotFoundError:
                continue  # renamed into place by the write that just released it
            if (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino):
                tmp.unlink()  # under the lock: a writer that takes it next sees st_nlink 0 and starts over
                removed.append(tmp)
        finally:
            os.close(fd)
    return removed


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
