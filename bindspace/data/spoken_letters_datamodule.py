"""``data=spoken_letters``: the letters benchmark, built on first use, read through the manifest path.

The builder (:mod:`bindspace.datasets.spoken_letters`) writes rendered glyphs of a-z, eSpeak NG speech of
their names, pen traces of their outlines (IMU) and captions into a cache folder in the manifest format.
The image-text, image-audio and image-imu pools are disjoint, so alignment among text, audio and IMU is
emergent.
"""

from __future__ import annotations

from bindspace.data import provided
from bindspace.data.built_datamodule import BuiltBenchmarkDataModule
from bindspace.datasets.spoken_letters import build_spoken_letters


class SpokenLettersDataModule(BuiltBenchmarkDataModule):
    """Letter images, their captions, spoken names and pen traces (see :class:`BuiltBenchmarkDataModule`)."""

    build = staticmethod(build_spoken_letters)
    train_manifests = ("train_image_text", "train_image_audio", "train_image_imu")
    modalities = provided.SPOKEN_LETTERS
