"""The errors bindspace raises for its users' mistakes, in one leaf module every package can import.

:class:`ConfigError` (and its subclasses: checkpoint, data-file, manifest and embedding-file errors,
defined beside the code that raises them) is a user error: the command lines print its one-line
message and exit with code 2.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A user configuration error; the message names the key, value or file at fault, on one line."""
