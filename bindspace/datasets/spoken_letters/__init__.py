"""Spoken letters: glyphs of a-z, eSpeak NG speech of their names, pen traces, captions (``data=spoken_letters``).

``builder`` writes the dataset (manifests and files) into a cache folder, reusing spoken digits' speech
and caching machinery. ``python -m bindspace.datasets.spoken_letters`` builds it and prints its files.
"""

from bindspace.datasets.spoken_letters.builder import (
    CAPTION_TEMPLATES,
    LETTER_NAMES,
    LETTERS,
    SpokenLettersParams,
    build_spoken_letters,
    class_prompts,
)

__all__ = [
    "CAPTION_TEMPLATES",
    "LETTERS",
    "LETTER_NAMES",
    "SpokenLettersParams",
    "build_spoken_letters",
    "class_prompts",
]
