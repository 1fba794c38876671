"""``data=spoken_letters``: the letters benchmark, built on first use, read through the manifest path.

The builder (:mod:`bindspace.datasets.spoken_letters`) writes rendered glyphs of a-z, eSpeak NG speech of
their names, pen traces of their outlines (IMU) and captions into a cache folder in the manifest format,
so this benchmark exercises the same readers, transforms and checks as any user's data. The image-text,
image-audio and image-imu pools are disjoint, so alignment among text, audio and IMU is emergent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bindspace.data.manifest_datamodule import ManifestDataModule
from bindspace.datasets.spoken_letters import build_spoken_letters
from bindspace.graph import Edge
from bindspace.modalities import ModalityConfig


class SpokenLettersDataModule(ManifestDataModule):
    """Builds (or reuses) the spoken-letters manifests, then behaves as a :class:`ManifestDataModule`.

    Args:
        configs, edges, seed: as every datamodule.
        cache_dir: where the built dataset lives (default ``$BINDSPACE_CACHE`` or ``~/.cache/bindspace``).
        build_seed: seed of the dataset build, independent of the training seed so that seeds of an
            ablation train on the same data.
        n_train_per_edge, n_val, image_size, sample_rate: build parameters (a new combination builds a
            new folder; the same one is reused).
        select_fraction: the share of the held-out rows validation selects on (early stopping), the rest
            scored; None: validation and test are all of them (:class:`ManifestDataModule`).
        batch_size, num_workers, pin_memory, on_error: as :class:`ManifestDataModule`.
    """

    @classmethod
    def provided_modalities(cls, **_: Any) -> list[str]:
        """Letter images, their captions, spoken names and pen traces."""
        return ["image", "text", "audio", "imu"]

    def __init__(
        self,
        configs: Mapping[str, ModalityConfig],
        edges: Sequence[Edge],
        seed: int = 0,
        cache_dir: str | None = None,
        build_seed: int = 0,
        n_train_per_edge: int = 1040,
        n_val: int = 390,
        image_size: int = 64,
        sample_rate: int = 16000,
        select_fraction: float | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        on_error: str = "raise",
    ) -> None:
        paths = build_spoken_letters(
            cache_dir, seed=build_seed, n_train_per_edge=n_train_per_edge, n_val=n_val,
            image_size=image_size, sample_rate=sample_rate,
        )  # fmt: skip
        edge_files = ("train_image_text", "train_image_audio", "train_image_imu")
        sources = [{"path": str(paths[name]), "weight": 1.0} for name in edge_files]
        super().__init__(
            configs, edges, batch_size=batch_size, seed=seed, sources=sources, val=str(paths["val"]),
            on_error=on_error, num_workers=num_workers, pin_memory=pin_memory, select_fraction=select_fraction,
        )  # fmt: skip
        self.dataset_dir = paths["val"].parent
