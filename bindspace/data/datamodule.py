"""Data for the built-in synthetic benchmark: one pool of scenes per edge, one held-out gallery.

Training draws, for every edge, pairs from that edge's own pool of scene ids; pools are disjoint by
default, so two modalities that never share an edge never see the same scene during training and
their alignment is truly emergent. Validation and test scenes hold every modality, and every
sample is rendered from ``(seed, scene id)`` alone, whatever the worker, rank or batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bindspace.data.steps import StepBatches, heldout_loader, step_loader
from bindspace.data.synthetic import MODALITIES as BUILTIN_RENDERED
from bindspace.data.synthetic import SyntheticConfig, SyntheticScenes, renderable_modalities
from bindspace.graph import Edge, edge_key
from bindspace.modalities import ModalityConfig, get_modality

Batch = dict[str, Any]

# Scene-id ranges: training pools start at 0 (pool k at k * pool_size), held-out sets far above.
VAL_BASE, TEST_BASE = 1_000_000_000, 2_000_000_000


class SceneDataset(Dataset):
    """Scenes ``offset .. offset + size - 1`` rendered in ``modalities`` and transformed to model input.

    Implements ``__getitems__`` so a DataLoader renders a whole batch in one vectorised call.
    """

    def __init__(
        self,
        scenes: SyntheticScenes,
        modalities: Sequence[str],
        configs: Mapping[str, ModalityConfig],
        offset: int,
        size: int,
    ) -> None:
        self.scenes, self.modalities, self.configs = scenes, list(modalities), configs
        self.offset, self.size = offset, size

    def __len__(self) -> int:
        return self.size

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        local = np.asarray(indices, dtype=np.int64).reshape(-1)
        if local.size and (local.min() < 0 or local.max() >= self.size):
            raise IndexError(f"scene index out of range 0..{self.size - 1}")
        ids = local + self.offset  # numpy throughout: a step renders 10 batches, each call counts
        batch: Batch = {"id": torch.from_numpy(ids), "label": torch.from_numpy(self.scenes.labels(ids))}
        for m in self.modalities:
            raw = self.scenes.render(m, ids)
            raw = raw if isinstance(raw, list) else torch.from_numpy(raw)
            batch[m] = get_modality(m).transform_batch(raw, self.configs[m].input)
        return batch

    def __getitem__(self, index: int) -> Batch:
        batch = self.__getitems__([index])
        return {k: ({kk: vv[0] for kk, vv in v.items()} if isinstance(v, dict) else v[0]) for k, v in batch.items()}


def scene_config(configs: Mapping[str, ModalityConfig], overrides: Mapping[str, Any] | None = None) -> SyntheticConfig:
    """Render at the model's input geometry so transforms do no resampling on the hot path."""
    derived: dict[str, Any] = {}
    if "image" in configs:
        derived["image_size"] = configs["image"].input.size
    elif "depth" in configs:
        derived["image_size"] = configs["depth"].input.size
    if "audio" in configs:
        derived["audio_sample_rate"] = configs["audio"].input.sample_rate
        derived["audio_seconds"] = configs["audio"].input.clip_seconds
    if "imu" in configs:
        derived["imu_length"] = configs["imu"].input.length
    return SyntheticConfig(**{**derived, **dict(overrides or {})})


class SyntheticDataModule(L.LightningDataModule):
    """Per-edge training loaders (combined so one step sees one batch of every active edge) and held-out sets.

    Args:
        configs: modality configs of the model (transforms and render geometry come from them).
        edges: the trainable edges; pool ``k`` belongs to ``edges[k]``.
        batch_size: per device and per edge.
        seed: scene seed (the same seed gives the same scenes on every machine).
        pool_size: scenes per edge pool.
        val_size, test_size: held-out scenes with every modality (test is the final gallery).
        disjoint_pools: if False every edge draws from pool 0 (so all modalities share scenes).
        scene: overrides of :class:`SyntheticConfig` (``num_classes``, ``noise``, ...).
    """

    @classmethod
    def provided_modalities(cls, **_: Any) -> list[str]:
        """Every registered modality the benchmark can render: the six built-ins and plugins that render."""
        return renderable_modalities()

    def __init__(
        self,
        configs: Mapping[str, ModalityConfig],
        edges: Sequence[Edge],
        batch_size: int = 64,
        seed: int = 0,
        pool_size: int = 100_000,
        val_size: int = 500,
        test_size: int = 1000,
        disjoint_pools: bool = True,
        num_workers: int = 0,
        pin_memory: bool = False,
        scene: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.configs, self.edges = dict(configs), [tuple(e) for e in edges]
        self.batch_size, self.seed, self.pool_size = batch_size, seed, pool_size
        self.val_size, self.test_size, self.disjoint_pools = val_size, test_size, disjoint_pools
        self.num_workers, self.pin_memory = num_workers, pin_memory
        plugins = {m: c.input for m, c in self.configs.items() if m not in BUILTIN_RENDERED}
        self.scenes = SyntheticScenes(scene_config(self.configs, scene), seed=seed, inputs=plugins)
        self.class_names = self.scenes.class_names()  # label index -> name, for zero-shot prompts
        # Edges drawn in each curriculum stage; a curriculum callback replaces this before fitting.
        self.stage_edges: list[list[Edge]] = [list(self.edges)]
        self.train_steps: StepBatches | None = None

    @property
    def modalities(self) -> list[str]:
        return list(self.configs)

    def edge_dataset(self, edge: Edge) -> SceneDataset:
        k = self.edges.index(tuple(edge)) if self.disjoint_pools else 0
        return SceneDataset(self.scenes, edge, self.configs, offset=k * self.pool_size, size=self.pool_size)

    def heldout_dataset(self, split: str) -> SceneDataset:
        offset, size = (VAL_BASE, self.val_size) if split == "val" else (TEST_BASE, self.test_size)
        return SceneDataset(self.scenes, self.modalities, self.configs, offset=offset, size=size)

    def train_dataloader(self) -> DataLoader:
        """Step-indexed: starts at the trainer's global step, so a resumed run continues its data order."""
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        self.train_steps = StepBatches(
            {edge_key(e): self.edge_dataset(e) for e in self.edges},
            self.stage_edges,
            self.batch_size,
            self.seed,
            rank=rank,
            world_size=world,
        )
        return step_loader(self.train_steps, trainer, self.num_workers, self.pin_memory)

    def steps_per_epoch(self, world_size: int = 1) -> int:
        """Steps in one pass over an edge's pool (curriculum stages measured in epochs use it)."""
        return max(1, self.pool_size // (self.batch_size * world_size))

    def set_stage(self, index: int) -> None:
        if self.train_steps is not None:
            self.train_steps.set_stage(index)

    def val_dataloader(self) -> DataLoader:
        return heldout_loader(self.heldout_dataset("val"), self.batch_size, self.num_workers, self.pin_memory)

    def test_dataloader(self) -> DataLoader:
        return heldout_loader(self.heldout_dataset("test"), self.batch_size, self.num_workers, self.pin_memory)
