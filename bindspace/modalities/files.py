"""Shared pieces of the file readers each modality declares: checks, safe decoders, one error type.

A modality's readers (``ModalitySpec.readers``, suffix -> function) only decode and validate; resizing,
resampling, cropping and normalisation belong to the spec's ``transform``. Any file that cannot be
used raises :class:`~bindspace.errors.DataFileError` naming the file and the reason; no other
exception type escapes, whatever the bytes on disk. ``.npy`` files load with ``allow_pickle=False``
(``.npz`` archives and pickles are refused); any NaN or Inf fails.
"""

from __future__ import annotations

import csv
import io
import math
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bindspace.errors import DataFileError, utf8_problem

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class InMemoryFile:
    """A file's bytes with its name, e.g. a member of a tar shard: readers decode it as they decode a path.

    ``name`` carries the suffix the reader is chosen by, and names the file in errors (``os.fspath`` gives
    it, so :class:`DataFileError` takes one like a path).
    """

    name: str
    data: bytes

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    def __fspath__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"InMemoryFile({self.name!r}, {len(self.data)} bytes)"


Source = Path | InMemoryFile  # what a reader decodes


def as_file(src: Source) -> Path | io.BytesIO:
    """What a decoder opens: the path itself, or a fresh binary stream over the bytes."""
    return io.BytesIO(src.data) if isinstance(src, InMemoryFile) else src


def read_bytes(src: Source) -> bytes:
    return src.data if isinstance(src, InMemoryFile) else src.read_bytes()


_NPY_MAGIC = b"\x93NUMPY"
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I")  # "I": 16-bit PNGs in older Pillow


@contextmanager
def decoding(path: Source, what: str) -> Iterator[None]:
    """Turn any exception raised by a third-party decoder into a DataFileError about `path`."""
    try:
        yield
    except DataFileError:
        raise
    # Decoders fail with many types (OSError, SyntaxError, struct.error, RuntimeError, MemoryError
    # on absurd headers ...); every one of them means "this file is unusable".
    except Exception as err:
        detail = str(err) or type(err).__name__
        raise DataFileError(path, f"cannot decode {what}: {detail}") from err


def checked_file(path: PathLike | InMemoryFile) -> Source:
    """Return ``path`` after checking that it is a non-empty regular file (the suffix is the spec's to check).

    Bytes in memory (:class:`InMemoryFile`) are checked to be non-empty and returned as they are.
    """
    if isinstance(path, InMemoryFile):
        if not path.data:
            raise DataFileError(path, "file is empty (0 bytes)")
        return path
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError as err:
        raise DataFileError(path, "file not found") from err
    except OSError as err:
        raise DataFileError(path, f"cannot access file: {err.strerror or err}") from err
    except ValueError as err:  # e.g. a NUL character in the path
        raise DataFileError(path, f"not a usable path: {err}") from err
    if not stat.S_ISREG(info.st_mode):  # directories, and FIFOs that would block a read forever
        raise DataFileError(path, "not a regular file")
    if info.st_size == 0:
        raise DataFileError(path, "file is empty (0 bytes)")
    return path


def to_float32(path: Path, array: np.ndarray, what: str) -> np.ndarray:
    """Cast to float32, failing on NaN/Inf (including float64 values beyond float32 range)."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(array, dtype=np.float32)
    bad = out.size - int(np.count_nonzero(np.isfinite(out)))
    if bad:
        raise DataFileError(path, f"{what} has {bad} non-finite values (NaN/Inf or beyond float32) of {out.size}")
    return out


def load_npy(path: Source) -> np.ndarray:
    """Load a .npy array without pickles, failing cleanly on truncated or forged headers."""
    with decoding(path, "a .npy array"):
        if isinstance(path, InMemoryFile):
            return _load_npy_bytes(path)
        with path.open("rb") as f:
            if f.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
                # Checked first because np.load would otherwise try zip (.npz) and pickle formats.
                raise DataFileError(path, "not a .npy file (no NumPy header; .npz and pickles are not accepted)")
        # Memory-mapping first makes a header promising more data than the file holds fail here,
        # instead of allocating whatever the header asks for.
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
        return np.array(mapped)


def _load_npy_bytes(src: InMemoryFile) -> np.ndarray:
    """The bytes of a .npy file: the header's promise checked against the bytes there (no memory map to do it)."""
    if not src.data.startswith(_NPY_MAGIC):
        raise DataFileError(src, "not a .npy file (no NumPy header; .npz and pickles are not accepted)")
    stream = io.BytesIO(src.data)
    version = np.lib.format.read_magic(stream)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(stream)
    if dtype.hasobject:
        raise DataFileError(src, "holds Python objects (a pickle); refused")
    needed, held = math.prod(shape) * dtype.itemsize, len(src.data) - stream.tell()
    if needed > held:
        raise DataFileError(src, f"truncated: its header declares {needed} bytes of data, the file holds {held}")
    stream.seek(0)
    return np.load(stream, allow_pickle=False)


def load_csv(path: Source) -> np.ndarray:
    """Parse a CSV of numbers into a float64 (rows, columns) array; row 1 may be a header."""
    with decoding(path, "CSV text"):
        data = read_bytes(path)
        problem = utf8_problem(data)
        if problem:
            raise DataFileError(path, f"CSV is {problem}")
        reader = csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""))
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    if rows and not _is_numeric(rows[0][1]):
        rows = rows[1:]
    if not rows:
        raise DataFileError(path, "CSV has no data rows")
    width = len(rows[0][1])
    values = []
    for line, row in rows:
        if len(row) != width:
            raise DataFileError(path, f"CSV line {line} has {len(row)} columns, expected {width}")
        if not _is_numeric(row):
            raise DataFileError(path, f"CSV line {line} holds a non-number: {row}")
        values.append([float(cell) for cell in row])
    return np.array(values, dtype=np.float64)


def _is_numeric(row: list[str]) -> bool:
    try:
        for cell in row:
            float(cell)
    except ValueError:
        return False
    return True


def as_plane(path: Path, array: np.ndarray, what: str) -> np.ndarray:
    """Return a (H, W) view of an (H, W) or (1, H, W) array, else fail naming the shape."""
    plane = array[0] if array.ndim == 3 and array.shape[0] == 1 else array
    if plane.ndim != 2 or 0 in plane.shape:
        raise DataFileError(path, f"{what} must be shaped (H, W) or (1, H, W) with H, W > 0; got {array.shape}")
    return plane


def read_gray_image(path: Source, formats: tuple[str, ...]) -> np.ndarray:
    """Decode a single-channel image to its stored integers: uint8 (8-bit) or uint16 (16-bit)."""
    with decoding(path, f"a {'/'.join(formats)} image"), Image.open(as_file(path), formats=formats) as img:
        img.load()
        mode, stored = img.mode, np.array(img)
    if mode in SIXTEEN_BIT_MODES:
        if stored.min() < 0 or stored.max() > 65535:
            raise DataFileError(path, f"mode {mode!r} image holds values outside the 16-bit range")
        return stored.astype(np.uint16)
    if mode == "L":
        return stored
    # Grayscale saved as RGB is common; genuine colour (false-colour palettes) cannot be inverted.
    if mode == "RGB" and (stored == stored[..., :1]).all():
        return np.ascontiguousarray(stored[..., 0])
    raise DataFileError(path, f"expected a single-channel grayscale image, got PIL mode {mode!r}")
