"""Data for the built-in synthetic benchmark: one pool of scenes per edge, one held-out gallery.

Training draws, for every edge, pairs from that edge's own pool of scene ids; pools are disjoint by
default, so two modalities that never share an edge never see the same scene during training and
their alignment is truly emergent. Validation and test scenes hold every modality, and every
sample is rendered from ``(seed, scene id)`` alone, whatever the worker, rank or batch.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from bindspace.data.base import PairedDataModule, check_split
from bindspace.data.checks import SYNTHETIC_POOL_SAMPLE
from bindspace.data.steps import StepFetch
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
        return _render_batches([self], [self.scene_ids(indices)])[0]

    def scene_ids(self, indices: Sequence[int]) -> np.ndarray:
        """(B,) int64 scene ids of dataset indices (numpy throughout: a step renders 10 batches, each call counts)."""
        local = np.asarray(indices, dtype=np.int64).reshape(-1)
        if local.size and (local.min() < 0 or local.max() >= self.size):
            raise IndexError(f"scene index out of range 0..{self.size - 1}")
        return local + self.offset

    def __getitem__(self, index: int) -> Batch:
        batch = self.__getitems__([index])
        return {k: ({kk: vv[0] for kk, vv in v.items()} if isinstance(v, dict) else v[0]) for k, v in batch.items()}


def render_step(requests: Sequence[tuple[SceneDataset, Sequence[int]]]) -> list[Batch]:
    """``[source.__getitems__(indices) for source, indices in requests]``, each modality rendered in one call.

    The image of the default graph's step is five edges' batches: one render of 5 x 32 scenes takes about
    60% of the time of five renders of 32 (per-call work: the hashes, the windows, the per-shape and
    per-colour passes). A scene renders to the same floats in any batch, so the batches are unchanged to
    the bit; transforms still run per edge batch, on the same shapes as before. Modalities are rendered on
    the process's threads (:func:`_parallel_map`).
    """
    scenes = {id(source.scenes) for source, _ in requests}
    if len(scenes) > 1 or not all(isinstance(source, SceneDataset) for source, _ in requests):
        return [source.__getitems__(indices) for source, indices in requests]
    return _render_batches([source for source, _ in requests], [source.scene_ids(i) for source, i in requests])


def _render_batches(sources: Sequence[SceneDataset], ids: Sequence[np.ndarray]) -> list[Batch]:
    """The batches of scenes ``ids[i]`` of ``sources[i]`` (one :class:`SyntheticScenes`), modality by modality.

    Each modality is one task: one render of the scenes of every batch that holds it, then its transform per
    batch. Tasks share nothing (each draws from its own ``(seed, scene id, modality)`` streams), so running
    them on several threads changes no value; the most used modality (the anchor's five batches in the
    default graph) starts first, since it takes longest.
    """
    names = list(dict.fromkeys(m for source in sources for m in source.modalities))
    users = {m: [i for i, source in enumerate(sources) if m in source.modalities] for m in names}

    def task(m: str) -> dict[int, Any]:
        rendered = sources[users[m][0]].scenes.render(m, np.concatenate([ids[i] for i in users[m]]))
        out, start = {}, 0
        for i in users[m]:
            part = rendered[start : start + len(ids[i])]
            start += len(ids[i])
            raw = part if isinstance(part, list) else torch.from_numpy(part)
            out[i] = get_modality(m).transform_batch(raw, sources[i].configs[m].input)
        return out

    order = sorted(names, key=lambda m: -len(users[m]))
    inputs = dict(zip(order, _parallel_map(task, order), strict=True))
    batches = []
    for i, source in enumerate(sources):
        batch: Batch = {"id": torch.from_numpy(ids[i]), "label": torch.from_numpy(source.scenes.labels(ids[i]))}
        batch.update({m: inputs[m][i] for m in source.modalities})
        batches.append(batch)
    return batches


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, threads, pool) of this process


def _parallel_map(fn: Callable[[str], Any], items: Sequence[str]) -> list[Any]:
    """``[fn(x) for x in items]``, on as many threads as torch's intra-op budget of the calling thread.

    With ``data.num_workers=0`` (the default) a step is rendered in the training process between two
    training steps, when torch's intra-op threads (2 on a 2-core machine) are idle: the modalities then run
    side by side, each on one thread (the pool's threads run torch single-threaded; numpy and torch release
    the GIL in their kernels), and a default-graph step takes about three quarters of the time it takes with
    the modalities one after the other (docs/benchmarks.md (d)). A DataLoader worker runs torch on one
    thread, so it renders serially: there, parallelism comes from the workers.
    """
    global _POOL
    threads = min(torch.get_num_threads(), len(items))
    if threads <= 1:
        return [fn(x) for x in items]
    if _POOL is None or _POOL[:2] != (os.getpid(), threads):  # a forked child cannot use its parent's threads
        if _POOL is not None and _POOL[0] == os.getpid():
            _POOL[2].shutdown(wait=False)
        _POOL = (os.getpid(), threads, _single_threaded_pool(threads))
    return list(_POOL[2].map(fn, items))


def _single_threaded_pool(threads: int) -> ThreadPoolExecutor:
    """``threads`` threads, each running torch on one thread, and nothing else changed.

    ``torch.set_num_threads`` sets the calling thread's OpenMP and MKL thread counts, but also the
    process-wide default that threads started later take: each pool thread sets its own count to one, then,
    once all have (a barrier), the caller's count is set again, so a thread started afterwards (a user's, the
    pin-memory thread) gets what it got before.
    """
    caller = torch.get_num_threads()
    ready = threading.Barrier(threads, timeout=60)
    pool = ThreadPoolExecutor(threads, "bindspace-render", _one_torch_thread)
    for done in [pool.submit(ready.wait) for _ in range(threads)]:
        done.result()
    torch.set_num_threads(caller)
    return pool


def _one_torch_thread() -> None:
    # A thread's first torch call takes the process-wide count (which the caller then sets back); make that
    # call first, so that the count set here is the one this thread keeps.
    torch.get_num_threads()
    torch.set_num_threads(1)


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


class SyntheticDataModule(PairedDataModule):
    """Per-edge training pools of scenes (pool ``k`` belongs to ``edges[k]``) and held-out scenes.

    Args:
        configs, edges, batch_size, seed, num_workers, pin_memory: as :class:`PairedDataModule`
            (``seed`` is also the scene seed: the same seed gives the same scenes on every machine).
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
        super().__init__(configs, edges, batch_size, seed, num_workers, pin_memory)
        self.pool_size, self.val_size, self.test_size = pool_size, val_size, test_size
        self.disjoint_pools = disjoint_pools
        plugins = {m: c.input for m, c in self.configs.items() if m not in BUILTIN_RENDERED}
        self.scenes = SyntheticScenes(scene_config(self.configs, scene), seed=seed, inputs=plugins)
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
