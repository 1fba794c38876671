"""Decode data files into raw numpy arrays, one reader per kind of file.

Readers only decode and validate. Resizing, resampling, cropping and normalisation belong to each
modality's spec. Any file that cannot be used raises `DataFileError` naming the file and the reason;
no other exception type escapes, whatever the bytes on disk.

Conventions (what each reader returns):

- image: uint8 (H, W, 3) RGB, pixels in stored order (EXIF orientation is not applied, so images stay
  aligned with paired depth/thermal maps). Alpha is dropped, not composited. 16-bit grayscale is
  scaled to 8 bits (v / 257). Animated files give their first frame.
- audio: float32 (C, T) in [-1, 1] plus the sample rate. Floating-point files peaking above 1 (e.g.
  resampling overshoot) are clipped; peaks above `MAX_FLOAT_AUDIO_PEAK` mean a wrong scale and fail.
- depth: float32 (H, W) in metres, >= 0; 0 means "no measurement" (the sensor convention). From float
  .npy in metres, or 16-bit PNG in millimetres. 8-bit PNG is rejected: its units are ambiguous.
- thermal: float32 (H, W) in [0, 1]. 8-bit PNG/JPEG and uint8 .npy are divided by 255, 16-bit PNG
  and uint16 .npy by 65535; float .npy must already be normalised to [0, 1] (within
  `THERMAL_RANGE_TOLERANCE`, then clipped).
- imu: float32 (6, T): accelerometer xyz then gyroscope xyz. Files may hold (T, 6) or (6, T); a
  (6, 6) array is read as (T, 6), rows are time, as in CSV files. A CSV may start with a header row.

Any NaN or Inf fails. `.npy` files load with `allow_pickle=False`; `.npz` archives are not accepted.
"""

import codecs
import csv
import io
import os
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image

from bindspace.modalities.base import ConfigError

PathLike = str | os.PathLike[str]

SUPPORTED_SUFFIXES: dict[str, tuple[str, ...]] = {
    "image": (".png", ".jpg", ".jpeg", ".webp"),
    "audio": (".wav", ".flac", ".ogg"),
    "depth": (".npy", ".png"),
    # JPEG because the common thermal sets (e.g. LLVIP, used by ImageBind) ship 8-bit JPEGs.
    "thermal": (".npy", ".png", ".jpg", ".jpeg"),
    "imu": (".npy", ".csv"),
}

MAX_FLOAT_AUDIO_PEAK = 2.0
# Above this many samples (4 GiB as float32) a header is far more likely corrupt than real.
MAX_AUDIO_SAMPLES = 2**30
THERMAL_RANGE_TOLERANCE = 1e-3
IMU_CHANNELS = 6

_NPY_MAGIC = b"\x93NUMPY"
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I")  # "I": 16-bit PNGs in older Pillow
# libsndfile logs "data : <declared> (should be <available>)" when a WAV's data chunk is cut short.
_WAV_DATA_LOG = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_WAV_UNKNOWN_LENGTH = 0x7FFFFFFF  # streaming writers put 0x7FFFFFFF/0xFFFFFFFF in the size field


class DataFileError(ConfigError):
    """A data file that cannot be used; str() names the file and says what is wrong, on one line.

    A ConfigError (so a ValueError): the command-line tools print it as one line and exit with 2.

    Attributes:
        path: The offending file.
        reason: What is wrong with it, in words (line breaks of decoder messages are joined).
    """

    def __init__(self, path: PathLike, reason: str):
        self.path = Path(path)
        self.reason = one_line(reason)
        super().__init__(f"{one_line(str(self.path))}: {self.reason}")

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:
        # The default would call DataFileError(message) with one argument, which fails when the
        # error crosses a process boundary (multiprocessing, DataLoader workers).
        return type(self), (self.path, self.reason)


def one_line(text: str) -> str:
    """``text`` with its line breaks (and the blanks around them) replaced by single spaces."""
    parts = text.splitlines()
    if len(parts) <= 1:
        return parts[0] if parts else ""
    return " ".join(part.strip() for part in parts if part.strip())


def _line_of(data: bytes, offset: int) -> int:
    """1-based line (universal newlines) of byte ``offset`` in ``data``, whose bytes before it are UTF-8."""
    return sum(1 for _ in io.StringIO(data[:offset].decode("utf-8", "replace") + "x", newline=None))


def utf8_problem(data: bytes) -> str | None:
    """Why ``data`` is not UTF-8 text, naming the line and byte offset, or None when it is.

    A leading UTF-8 byte-order mark is allowed; NUL bytes are not (UTF-16 without a byte-order mark,
    or a binary file). Lines count like Python's universal newlines.
    """
    fix = "save it as UTF-8"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return f"not UTF-8 but UTF-16 (it starts with a UTF-16 byte-order mark; line 1, byte offset 0); {fix}"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        where = f"line {_line_of(data, err.start)}, byte offset {err.start}"
        return f"not UTF-8 ({where}: byte 0x{data[err.start]:02x}, {err.reason}); Latin-1 or UTF-16? {fix}"
    nul = data.find(b"\x00")
    if nul >= 0:
        where = f"line {_line_of(data, nul)}, byte offset {nul}"
        return f"not UTF-8 text ({where}: a NUL byte); UTF-16 or a binary file? {fix}"
    return None


@contextmanager
def _decoding(path: Path, what: str) -> Iterator[None]:
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


def _checked_path(path: PathLike, modality: str) -> Path:
    """Return `path` after checking its suffix and that it is a non-empty regular file."""
    path = Path(path)
    accepted = SUPPORTED_SUFFIXES[modality]
    if path.suffix.lower() not in accepted:
        found = f"suffix {path.suffix!r}" if path.suffix else "no suffix"
        raise DataFileError(path, f"{modality} files need a known suffix, got {found}; accepted: {', '.join(accepted)}")
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


def _to_float32(path: Path, array: np.ndarray, what: str) -> np.ndarray:
    """Cast to float32, failing on NaN/Inf (including float64 values beyond float32 range)."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(array, dtype=np.float32)
    bad = out.size - int(np.count_nonzero(np.isfinite(out)))
    if bad:
        raise DataFileError(path, f"{what} has {bad} non-finite values (NaN/Inf or beyond float32) of {out.size}")
    return out


def _load_npy(path: Path) -> np.ndarray:
    """Load a .npy array without pickles, failing cleanly on truncated or forged headers."""
    with _decoding(path, "a .npy array"):
        with path.open("rb") as f:
            if f.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
                # Checked first because np.load would otherwise try zip (.npz) and pickle formats.
                raise DataFileError(path, "not a .npy file (no NumPy header; .npz and pickles are not accepted)")
        # Memory-mapping first makes a header promising more data than the file holds fail here,
        # instead of allocating whatever the header asks for.
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
        return np.array(mapped)


def _load_csv(path: Path) -> np.ndarray:
    """Parse a CSV of numbers into a float64 (rows, columns) array; row 1 may be a header."""
    with _decoding(path, "CSV text"):
        data = path.read_bytes()
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


def _as_plane(path: Path, array: np.ndarray, what: str) -> np.ndarray:
    """Return a (H, W) view of an (H, W) or (1, H, W) array, else fail naming the shape."""
    plane = array[0] if array.ndim == 3 and array.shape[0] == 1 else array
    if plane.ndim != 2 or 0 in plane.shape:
        raise DataFileError(path, f"{what} must be shaped (H, W) or (1, H, W) with H, W > 0; got {array.shape}")
    return plane


def _read_gray_image(path: Path, formats: tuple[str, ...]) -> np.ndarray:
    """Decode a single-channel image to its stored integers: uint8 (8-bit) or uint16 (16-bit)."""
    with _decoding(path, f"a {'/'.join(formats)} image"), Image.open(path, formats=formats) as img:
        img.load()
        mode, stored = img.mode, np.array(img)
    if mode in _SIXTEEN_BIT_MODES:
        if stored.min() < 0 or stored.max() > 65535:
            raise DataFileError(path, f"mode {mode!r} image holds values outside the 16-bit range")
        return stored.astype(np.uint16)
    if mode == "L":
        return stored
    # Grayscale saved as RGB is common; genuine colour (false-colour palettes) cannot be inverted.
    if mode == "RGB" and (stored == stored[..., :1]).all():
        return np.ascontiguousarray(stored[..., 0])
    raise DataFileError(path, f"expected a single-channel grayscale image, got PIL mode {mode!r}")


def read_image(path: PathLike) -> np.ndarray:
    """Read a PNG, JPEG or WEBP image as RGB.

    Args:
        path: Image file; any size and PIL mode (L, LA, P, RGBA, I;16, CMYK ...).

    Returns:
        uint8 array (H, W, 3), RGB, in stored pixel order.

    Raises:
        DataFileError: Missing, empty, truncated or undecodable file.
    """
    path = _checked_path(path, "image")
    with _decoding(path, "a PNG/JPEG/WEBP image"), Image.open(path, formats=("PNG", "JPEG", "WEBP")) as img:
        img.load()  # decode every byte now, so a truncated file fails here and not in a transform
        if img.mode in _SIXTEEN_BIT_MODES:
            # convert("RGB") would clip 16-bit values at 255; scale to the full 8-bit range instead.
            gray = (np.clip(np.array(img), 0, 65535) / 257.0).round().astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=-1)
        return np.array(img.convert("RGB"))


def read_audio(path: PathLike) -> tuple[np.ndarray, int]:
    """Read a WAV, FLAC or Ogg (Vorbis/Opus) file with soundfile.

    Args:
        path: Audio file with at least one sample.

    Returns:
        float32 array (C, T) in [-1, 1], and the sample rate in Hz.

    Raises:
        DataFileError: Unreadable, zero-length, truncated (WAV and FLAC; a truncated Ogg decodes as
            a shorter clip), non-finite, or floating-point audio peaking above MAX_FLOAT_AUDIO_PEAK.
    """
    path = _checked_path(path, "audio")
    with _decoding(path, "audio"), sf.SoundFile(path) as f:
        if f.frames * f.channels > MAX_AUDIO_SAMPLES:
            raise DataFileError(path, f"header claims {f.frames} frames x {f.channels} channels; too large")
        _check_wav_complete(path, f)
        rate, declared = f.samplerate, f.frames
        samples = f.read(dtype="float32", always_2d=True)  # (T, C)
    if samples.shape[0] == 0:
        raise DataFileError(path, "audio has zero length (no samples)")
    if samples.shape[0] < declared:
        raise DataFileError(path, f"truncated: header declares {declared} frames, only {samples.shape[0]} decoded")
    samples = _to_float32(path, samples, "audio")
    peak = float(np.abs(samples).max())
    if peak > MAX_FLOAT_AUDIO_PEAK:
        raise DataFileError(path, f"samples peak at {peak:.4g}, expected full scale 1.0; is it mis-scaled?")
    return np.ascontiguousarray(np.clip(samples, -1.0, 1.0).T), int(rate)


def _check_wav_complete(path: Path, f: sf.SoundFile) -> None:
    """Fail if a WAV's data chunk is shorter than its header says (libsndfile reads it silently)."""
    match = _WAV_DATA_LOG.search(f.extra_info) if f.format in ("WAV", "WAVEX") else None
    if match is None:
        return
    declared, available = int(match.group(1)), int(match.group(2))
    if available < declared < _WAV_UNKNOWN_LENGTH:
        raise DataFileError(path, f"truncated: data chunk declares {declared} bytes, file holds {available}")


def read_depth(path: PathLike) -> np.ndarray:
    """Read a depth map in metres.

    Args:
        path: Float .npy in metres shaped (H, W) or (1, H, W), or 16-bit grayscale PNG in
            millimetres.

    Returns:
        float32 array (H, W) in metres, all values finite and >= 0.

    Raises:
        DataFileError: Unreadable file, 8-bit PNG, integer .npy, wrong shape, NaN/Inf or negatives.
    """
    path = _checked_path(path, "depth")
    if path.suffix.lower() == ".npy":
        array = _load_npy(path)
        if array.dtype.kind != "f":
            raise DataFileError(
                path, f"depth .npy must hold floats in metres, got dtype {array.dtype} (units ambiguous)"
            )
        depth = _to_float32(path, _as_plane(path, array, "depth"), "depth")
    else:
        stored = _read_gray_image(path, ("PNG",))
        if stored.dtype != np.uint16:
            raise DataFileError(
                path, "8-bit PNG depth is ambiguous (unknown units); save 16-bit PNG in mm or .npy in metres"
            )
        depth = stored.astype(np.float32) / 1000.0
    if depth.min() < 0:
        raise DataFileError(path, f"depth has negative values (min {depth.min():.4g}); expected metres >= 0")
    return depth


def read_thermal(path: PathLike) -> np.ndarray:
    """Read a thermal image normalised to [0, 1].

    Args:
        path: 8-bit PNG/JPEG, 16-bit PNG, or .npy shaped (H, W) or (1, H, W): uint8, uint16, or
            float already normalised to [0, 1].

    Returns:
        float32 array (H, W) in [0, 1].

    Raises:
        DataFileError: Unreadable file, colour image, wrong shape or dtype, NaN/Inf, or float values
            outside [0, 1] beyond THERMAL_RANGE_TOLERANCE.
    """
    path = _checked_path(path, "thermal")
    if path.suffix.lower() != ".npy":
        stored = _read_gray_image(path, ("PNG", "JPEG"))
        return stored.astype(np.float32) / np.iinfo(stored.dtype).max
    plane = _as_plane(path, _load_npy(path), "thermal")
    if plane.dtype.kind == "u" and plane.dtype.itemsize <= 2:  # either byte order
        return plane.astype(np.float32) / np.iinfo(plane.dtype).max
    if plane.dtype.kind != "f":
        raise DataFileError(path, f"thermal .npy must be uint8, uint16 or float in [0, 1], got dtype {plane.dtype}")
    thermal = _to_float32(path, plane, "thermal")
    low, high = float(thermal.min()), float(thermal.max())
    if low < -THERMAL_RANGE_TOLERANCE or high > 1 + THERMAL_RANGE_TOLERANCE:
        raise DataFileError(path, f"float thermal must be normalised to [0, 1], found [{low:.4g}, {high:.4g}]")
    return np.clip(thermal, 0.0, 1.0)


def read_imu(path: PathLike) -> np.ndarray:
    """Read six-axis IMU samples (accelerometer xyz, gyroscope xyz).

    Args:
        path: .npy or .csv holding (T, 6) or (6, T) numbers; (6, 6) is read as (T, 6). A CSV may
            start with one header row of column names.

    Returns:
        float32 array (6, T), T >= 1.

    Raises:
        DataFileError: Unreadable file, non-numeric values, any other shape, or NaN/Inf.
    """
    path = _checked_path(path, "imu")
    array = _load_npy(path) if path.suffix.lower() == ".npy" else _load_csv(path)
    if array.dtype.kind not in "iuf":
        raise DataFileError(path, f"IMU values must be real numbers, got dtype {array.dtype}")
    if array.ndim == 2 and array.shape[1] == IMU_CHANNELS:  # (T, 6), checked first so (6, 6) lands here
        array = array.T
    elif not (array.ndim == 2 and array.shape[0] == IMU_CHANNELS):
        raise DataFileError(path, f"IMU must be shaped (T, 6) or (6, T), got {array.shape}")
    if array.shape[1] == 0:
        raise DataFileError(path, "IMU has no samples (T = 0)")
    return _to_float32(path, array, "IMU")


READERS: dict[str, Callable[[Path], Any]] = {
    "image": read_image,
    "audio": read_audio,
    "depth": read_depth,
    "thermal": read_thermal,
    "imu": read_imu,
}


def read_file(modality: str, path: PathLike) -> Any:
    """Read `path` with the reader for `modality`.

    Args:
        modality: One of READERS' keys.
        path: The file; its suffix must be one of SUPPORTED_SUFFIXES[modality].

    Returns:
        Whatever that modality's reader returns.

    Raises:
        ValueError: Unknown modality.
        DataFileError: The file cannot be used (including a suffix the modality does not accept).
    """
    reader = READERS.get(modality)
    if reader is None:
        raise ValueError(f"no file reader for modality {modality!r}; known: {', '.join(READERS)}")
    return reader(path)
