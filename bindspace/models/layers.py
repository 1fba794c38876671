"""Moved to :mod:`bindspace.nn.layers` (a leaf package below the modality registry); kept for old imports."""

from bindspace.nn.layers import *  # noqa: F403
