"""Moved to :mod:`bindspace.datasets.spoken_digits` (builders live apart from the loading code); this
name keeps scripts written against earlier releases working, ``python -m bindspace.data.spoken_digits`` too."""

from bindspace.datasets.spoken_digits.builder import *  # noqa: F403
from bindspace.datasets.spoken_digits.builder import main

if __name__ == "__main__":
    main()
