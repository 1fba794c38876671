"""Benchmarks built on first use (``data=spoken_digits``, ``data=spoken_letters``), read as manifests.

A builder (:mod:`bindspace.datasets`) writes the benchmark into a cache folder in the manifest format:
one training manifest per edge pool and a ``val.jsonl`` whose rows hold every modality. This module
builds (or reuses) it and hands the manifests to :class:`ManifestDataModule`, so a built benchmark
exercises the same readers, transforms and checks as any user's data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from bindspace.data.manifest_datamodule import ManifestDataModule
from bindspace.graph import Edge
from bindspace.modalities import ModalityConfig


class BuiltBenchmarkDataModule(ManifestDataModule):
    """Builds (or reuses) a benchmark's manifests, then behaves as a :class:`ManifestDataModule`.

    Subclasses name their builder (``build``: ``(cache_dir, seed=, n_train_per_edge=, n_val=, image_size=,
    sample_rate=) -> {manifest name: path}``), the training manifests (``train_manifests``, one per edge
    pool, mixed with equal weights) and the modalities the benchmark holds.

    Args:
        configs, edges, seed: as every datamodule.
        cache_dir: where the built dataset lives (default ``$BINDSPACE_CACHE`` or ``~/.cache/bindspace``).
        build_seed: seed of the dataset build, independent of the training seed so that seeds of an
            ablation train on the same data.
        n_train_per_edge, n_val, image_size, sample_rate: build parameters (None: the benchmark's default;
            a new combination builds a new folder, the same one is reused).
        select_fraction: the share of the held-out rows validation selects on (early stopping), the rest
            scored; None: validation and test are all of them (:class:`ManifestDataModule`).
        batch_size, num_workers, pin_memory, on_error: as :class:`ManifestDataModule`.
    """

    build: ClassVar[Callable[..., dict[str, Path]]]
    train_manifests: ClassVar[tuple[str, ...]]
    modalities: ClassVar[tuple[str, ...]]

    @classmethod
    def provided_modalities(cls, **_: Any) -> list[str]:
        return list(cls.modalities)

    def __init__(
        self,
        configs: Mapping[str, ModalityConfig],
        edges: Sequence[Edge],
        seed: int = 0,
        cache_dir: str | None = None,
        build_seed: int = 0,
        n_train_per_edge: int | None = None,
        n_val: int | None = None,
        image_size: int = 64,
        sample_rate: int = 16000,
        select_fraction: float | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        on_error: str = "raise",
    ) -> None:
        sizes = {k: v for k, v in (("n_train_per_edge", n_train_per_edge), ("n_val", n_val)) if v is not None}
        paths = type(self).build(cache_dir, seed=build_seed, image_size=image_size, sample_rate=sample_rate, **sizes)
        super().__init__(
            configs, edges, batch_size=batch_size, seed=seed,
            sources=[{"path": str(paths[name]), "weight": 1.0} for name in self.train_manifests],
            val=str(paths["val"]), select_fraction=select_fraction, on_error=on_error, num_workers=num_workers,
            pin_memory=pin_memory,
        )  # fmt: skip
        self.dataset_dir = paths["val"].parent
