"""Spoken digits: real handwritten digits, eSpeak NG speech of their names, captions (``data=spoken_digits``).

``builder`` writes the dataset (manifests and files) into a cache folder; ``espeak`` drives
libespeak-ng through ctypes. ``python -m bindspace.datasets.spoken_digits`` builds it and prints its files.
"""

from bindspace.datasets.spoken_digits.builder import (
    CAPTION_TEMPLATES,
    DIGIT_NAMES,
    SpokenDigitsParams,
    build_spoken_digits,
    class_prompts,
    content_hash,
    default_cache_dir,
)

__all__ = [
    "CAPTION_TEMPLATES",
    "DIGIT_NAMES",
    "SpokenDigitsParams",
    "build_spoken_digits",
    "class_prompts",
    "content_hash",
    "default_cache_dir",
]
