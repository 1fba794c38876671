"""``data=spoken_digits``: the real-data benchmark, built on first use, read through the manifest path.

The builder (:mod:`bindspace.datasets.spoken_digits`) writes real handwritten digits, eSpeak NG speech of
their names and captions into a cache folder in the manifest format. Image-text and image-audio pools are
disjoint, so audio<->text alignment is emergent.
"""

from __future__ import annotations

from bindspace.data import provided
from bindspace.data.built_datamodule import BuiltBenchmarkDataModule
from bindspace.datasets.spoken_digits import build_spoken_digits


class SpokenDigitsDataModule(BuiltBenchmarkDataModule):
    """Handwritten digit images, their captions and spoken names (see :class:`BuiltBenchmarkDataModule`)."""

    build = staticmethod(build_spoken_digits)
    train_manifests = ("train_image_text", "train_image_audio")
    modalities = provided.SPOKEN_DIGITS
