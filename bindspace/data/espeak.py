"""Moved to :mod:`bindspace.datasets.spoken_digits.espeak`; this name keeps earlier scripts working."""

from bindspace.datasets.spoken_digits.espeak import *  # noqa: F403
from bindspace.datasets.spoken_digits.espeak import EspeakError, Speaker  # noqa: F401
