"""The errors bindspace raises for its users' mistakes, in one leaf module every package can import.

:class:`ConfigError` (and its subclasses: :class:`DataFileError` here; checkpoint, manifest and
embedding-file errors beside the code that raises them) is a user error: the command lines print its one-line
message and exit with code 2.
"""

from __future__ import annotations

import codecs
import io
import os
from pathlib import Path


class ConfigError(ValueError):
    """A user configuration error; the message names the key, value or file at fault, on one line."""


class DataFileError(ConfigError):
    """A data file that cannot be used; str() names the file and says what is wrong, on one line.

    A ConfigError (so a ValueError): the command-line tools print it as one line and exit with 2.

    Attributes:
        path: The offending file.
        reason: What is wrong with it, in words (line breaks of decoder messages are joined).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str):
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
