"""Moved to :mod:`bindspace.nn.pretrained` (a leaf package below the modality registry); kept for old imports."""

from bindspace.nn.pretrained import *  # noqa: F403
