"""File reading by modality name: a thin view over the readers each modality's spec declares.

Each modality module declares its readers (``ModalitySpec.readers``: suffix -> function) and
documents what they return; :mod:`bindspace.modalities.files` holds the checks and safe decoders
they share. This module keeps the by-name entry points the data sources and command lines use:
:func:`read_file`, :func:`supported_suffixes`, and, for scripts written against earlier releases,
``SUPPORTED_SUFFIXES``/``READERS`` (computed from the registry, so plugin modalities appear too).

Conventions of the built-in readers: image uint8 (H, W, 3) RGB; audio float32 (C, T) in [-1, 1] plus
the sample rate; depth float32 (H, W) metres; thermal float32 (H, W) in [0, 1]; imu float32 (6, T).
Any file that cannot be used raises :class:`DataFileError` naming the file and the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bindspace.errors import DataFileError, one_line, utf8_problem
from bindspace.modalities import get_modality, list_modalities
from bindspace.modalities.audio import MAX_AUDIO_SAMPLES, MAX_FLOAT_AUDIO_PEAK, read_audio
from bindspace.modalities.depth import read_depth
from bindspace.modalities.files import InMemoryFile, PathLike
from bindspace.modalities.image import read_image
from bindspace.modalities.imu import IMU_CHANNELS, read_imu
from bindspace.modalities.thermal import THERMAL_RANGE_TOLERANCE, read_thermal

__all__ = [
    "IMU_CHANNELS",
    "MAX_AUDIO_SAMPLES",
    "MAX_FLOAT_AUDIO_PEAK",
    "THERMAL_RANGE_TOLERANCE",
    "DataFileError",
    "InMemoryFile",
    "one_line",
    "read_audio",
    "read_depth",
    "read_file",
    "read_image",
    "read_imu",
    "read_thermal",
    "supported_suffixes",
    "utf8_problem",
]


def supported_suffixes() -> dict[str, tuple[str, ...]]:
    """Registered modality -> the file suffixes it reads, for every modality read from files."""
    return {m: get_modality(m).suffixes for m in list_modalities() if get_modality(m).suffixes}


def read_file(modality: str, path: PathLike | InMemoryFile) -> Any:
    """Read ``path`` (or a file's bytes held in memory) with the reader ``modality``'s spec declares for its suffix.

    Raises:
        ValueError: a modality that is not registered or is not read from files (text is inline).
        DataFileError: the file cannot be used (including a suffix the modality does not read).
    """
    if modality not in list_modalities() or not get_modality(modality).suffixes:
        known = ", ".join(supported_suffixes())
        raise ValueError(f"no file reader for modality {modality!r}; known: {known}")
    return get_modality(modality).read(path if isinstance(path, InMemoryFile) else Path(path))


def __getattr__(name: str) -> Any:
    if name == "SUPPORTED_SUFFIXES":
        return supported_suffixes()
    if name == "READERS":
        readers: dict[str, Callable[[Path], Any]] = {m: get_modality(m).read for m in supported_suffixes()}
        return readers
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
