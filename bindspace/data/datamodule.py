"""Data for the built-in synthetic benchmark: one pool of scenes per edge, one held-out gallery.

Training draws, for every edge, pairs from that edge's own pool of scene ids; pools are disjoint by
default, so two modalities that never share an edge never see the same scene during training and
their alignment is truly emergent. Validation and test scenes hold every modality, and every
sample is rendered from ``(seed, scene id)`` alone, whatever the worker, rank or batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from bindspace.data import provided
from bindspace.data.base import PairedDataModule, check_split
from bindspace.data.checks import SYNTHETIC_POOL_SAMPLE
from bindspace.data.steps import StepFetch
from bindspace.data.synthetic import MODALITIES as BUILTIN_RENDERED
from bindspace.data.synthetic import SyntheticScenes, scene_config
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
        ids = self.scene_ids(indices)
        return self.batch(ids, {m: self.scenes.render(m, ids) for m in self.modalities})

    def scene_ids(self, indices: Sequence[int]) -> np.ndarray:
        """(B,) int64 scene ids of dataset indices (numpy throughout: a step renders 10 batches, each call counts)."""
        local = np.asarray(indices, dtype=np.int64).reshape(-1)
        if local.size and (local.min() < 0 or local.max() >= self.size):
            raise IndexError(f"scene index out of range 0..{self.size - 1}")
        return local + self.offset

    def batch(self, ids: np.ndarray, raws: Mapping[str, np.ndarray | list[str]]) -> Batch:
        """The batch of scenes ``ids`` from their renders in each modality: labels, and model inputs."""
        batch: Batch = {"id": torch.from_numpy(ids), "label": torch.from_numpy(self.scenes.labels(ids))}
        for m in self.modalities:
            raw = raws[m] if isinstance(raws[m], list) else torch.from_numpy(raws[m])
            batch[m] = get_modality(m).transform_batch(raw, self.configs[m].input)
        return batch

    def __getitem__(self, index: int) -> Batch:
        batch = self.__getitems__([index])
        return {k: ({kk: vv[0] for kk, vv in v.items()} if isinstance(v, dict) else v[0]) for k, v in batch.items()}


def render_step(requests: Sequence[tuple[SceneDataset, Sequence[int]]]) -> list[Batch]:
    """``[source.__getitems__(indices) for source, indices in requests]``, each modality rendered in one call.

    The image of the default graph's step is five edges' batches: one render of 5 x 32 scenes takes about
    60% of the time of five renders of 32 (per-call work: the hashes, the windows, the per-shape and
    per-colour passes), about 1 ms of a 26 ms generated step (docs/benchmarks.md (d)). A scene renders
    to the same floats in any batch, so the batches are unchanged to the bit; transforms still run per
    edge batch, on the same shapes as before.
    """
    scenes = {id(source.scenes) for source, _ in requests}
    if len(scenes) > 1 or not all(isinstance(source, SceneDataset) for source, _ in requests):
        return [source.__getitems__(indices) for source, indices in requests]
    ids = [source.scene_ids(indices) for source, indices in requests]
    raws: list[dict[str, Any]] = [{} for _ in requests]
    for m in dict.fromkeys(m for source, _ in requests for m in source.modalities):
        users = [i for i, (source, _) in enumerate(requests) if m in source.modalities]
        rendered = requests[users[0]][0].scenes.render(m, np.concatenate([ids[i] for i in users]))
        start = 0
        for i in users:
            raws[i][m] = rendered[start : start + len(ids[i])]
            start += len(ids[i])
    return [source.batch(i, raw) for (source, _), i, raw in zip(requests, ids, raws, strict=True)]


class SyntheticDataModule(PairedDataModule):
    """Per-edge training pools of scenes (pool ``k`` belongs to ``edges[k]``) and held-out scenes.

    Args:
        configs, edges, batch_size, seed, num_workers, pin_memory: as :class:`PairedDataModule`
            (``seed`` is also the scene seed: the same seed gives the same scenes on every machine).
        pool_size: scenes per edge pool.
        val_size, test_size: held-out scenes with every modality (test is the final gallery).
        disjoint_pools: if False every edge draws from pool 0 (so all modalities share scenes).
        scene: overrides of :class:`SyntheticConfig`: what the scenes show (``num_classes``, ``noise``, ...).
        synthetic: the renderer's options (``version``: :data:`~bindspace.data.synthetic.RENDERER_KEYS`).
    """

    @classmethod
    def provided_modalities(cls, **_: Any) -> list[str]:
        """Every registered modality the benchmark can render: the six built-ins and plugins that render."""
        return provided.synthetic()

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
        synthetic: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(configs, edges, batch_size, seed, num_workers, pin_memory)
        self.pool_size, self.val_size, self.test_size = pool_size, val_size, test_size
        self.disjoint_pools = disjoint_pools
        plugins = {m: c.input for m, c in self.configs.items() if m not in BUILTIN_RENDERED}
        self.scenes = SyntheticScenes(scene_config(self.configs, scene, synthetic), seed=seed, inputs=plugins)
        self.class_names = self.scenes.class_names()  # label index -> name, for zero-shot prompts
        self._heldout = {
            "val": SceneDataset(self.scenes, self.modalities, self.configs, offset=VAL_BASE, size=val_size),
            "test": SceneDataset(self.scenes, self.modalities, self.configs, offset=TEST_BASE, size=test_size),
        }

    def edge_dataset(self, edge: Edge) -> SceneDataset:
        k = self.edges.index(tuple(edge)) if self.disjoint_pools else 0
        return SceneDataset(self.scenes, edge, self.configs, offset=k * self.pool_size, size=self.pool_size)

    def edge_sources(self) -> dict[str, SceneDataset]:
        return {edge_key(e): self.edge_dataset(e) for e in self.edges}

    def heldout_set(self, split: str) -> SceneDataset:
        return self._heldout[check_split(split)]

    def step_fetch(self) -> StepFetch:
        return render_step

    heldout_dataset = heldout_set  # the name before the PairedDataModule base

    def captions(self) -> list[str]:
        """Captions of the first ``SYNTHETIC_POOL_SAMPLE`` scenes of each text pool and every held-out scene."""
        if "text" not in self.modalities:
            return []
        pools = {ds.offset: ds for e, ds in zip(self.edges, self.edge_sources().values()) if "text" in e}
        sets = [*pools.values(), *self.heldout_sets()]
        ids = [np.arange(ds.offset, ds.offset + min(ds.size, SYNTHETIC_POOL_SAMPLE)) for ds in sets]
        return self.scenes.render("text", np.concatenate(ids))
