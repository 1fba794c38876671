"""Step-indexed training batches: the data of global step ``s`` is a pure function of ``(seed, s)``.

Every training step draws one batch per active edge. Which samples an edge gets at step ``s`` is
computed, not iterated: the edge's pool is permuted once per pass (seeded by seed, edge and pass) and
step ``s`` takes the slice ``[s * G, (s + 1) * G)`` of that order, where ``G`` is the global batch
(per-device batch x world size); rank ``r`` takes rows ``[r * B, (r + 1) * B)`` of the slice. Hence:

- resuming at step ``s`` needs no iterator state: the loader simply starts at ``s``;
- one process with batch ``G`` and ``N`` processes with batch ``G / N`` see the same samples at every
  step, which makes distributed training checkable against a single process;
- a curriculum changes which edges are drawn by writing a stage index into shared memory that
  DataLoader workers read at every step; batches they rendered before the change lack the new stage's
  edges, which the main process draws before the step (``PairedDataModule.on_before_batch_transfer``).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bindspace.data.augment import augment_batch, row_generators
from bindspace.graph import Edge, edge_key

# A loader ends after this many steps; Lightning stops at trainer.max_steps long before.
MAX_STEPS = 10**12


class BatchSource(Protocol):
    """A dataset whose ``__getitems__`` returns one collated batch for a list of indices."""

    def __len__(self) -> int: ...

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]: ...


# The batches of several (source, indices) requests of one step in one call, in request order.
StepFetch = Callable[[Sequence[tuple[BatchSource, Sequence[int]]]], list[dict[str, Any]]]


@lru_cache(maxsize=64)
def _permutation(seed: int, edge_index: int, epoch: int, size: int) -> np.ndarray:
    return np.random.default_rng([seed, edge_index, epoch]).permutation(size)


def step_indices(seed: int, edge_index: int, size: int, step: int, global_batch: int) -> np.ndarray:
    """Pool indices of the global batch at ``step``.

    Each pass over the pool is a fresh permutation, so no sample repeats within a pass.
    """
    if global_batch > size:
        raise ValueError(f"global batch {global_batch} exceeds the edge's {size} samples")
    per_epoch = size // global_batch  # the tail that does not fill a batch is skipped each pass
    epoch, within = divmod(step, per_epoch)
    start = within * global_batch
    return _permutation(seed, edge_index, epoch, size)[start : start + global_batch]


class StepBatches(Dataset):
    """``dataset[step]`` -> ``{edge key: batch}`` for this rank, for the edges of the current stage.

    Args:
        sources: per edge key, the dataset of that edge's paired samples.
        stage_edges: per curriculum stage, the edges drawn during that stage.
        batch_size: per device and per edge.
        seed: data order seed.
        rank, world_size: this process's slice of the global batch.
        augment: modality -> augmentation settings (:mod:`bindspace.data.augment`), applied to every
            training batch holding the modality, random per (seed, step, edge, row of the global batch).
        configs: modality -> config (the input configs the augmentations read); needed with ``augment``.
        choices: hand the sources a generator per row (``__getitems__(indices, choices=...)``) for what
            they draw before decoding (one of a sample's captions), random per (seed, step, edge, row).
        fetch: ``fetch([(source, indices), ...]) -> [batch, ...]``, the step's batches of several sources in
            one call (the synthetic benchmark renders a modality that several edges share in one pass);
            each batch must equal ``source.__getitems__(indices)``. Not used with ``choices``.
    """

    def __init__(
        self,
        sources: Mapping[str, BatchSource],
        stage_edges: Sequence[Sequence[Edge]],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        augment: Mapping[str, Any] | None = None,
        configs: Mapping[str, Any] | None = None,
        choices: bool = False,
        fetch: StepFetch | None = None,
    ) -> None:
        self.sources, self.keys = dict(sources), list(sources)
        self.choices, self.fetch = choices, fetch
        self.stage_edges = [[edge_key(e) for e in edges] for edges in stage_edges]
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.augment = {m: a for m, a in (augment or {}).items() if a}
        self.configs = dict(configs or {})
        missing = [m for m in self.augment if m not in self.configs]
        if missing:
            raise ValueError(f"augmentation of {missing} needs their configs")
        # Shared memory so DataLoader workers see stage changes made in the main process.
        self.stage = torch.zeros(1, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return MAX_STEPS

    def set_stage(self, index: int) -> None:
        self.stage[0] = index

    def __getitem__(self, step: int) -> dict[str, dict[str, Any]]:
        return self.edge_batches(step, self.stage_keys())

    def stage_keys(self) -> list[str]:
        """Keys of the edges drawn in the current stage."""
        return self.stage_edges[int(self.stage[0])]

    def edge_batches(self, step: int, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``{edge key: batch}`` of this rank at ``step`` for the edges ``keys`` (``dataset[step]``: the stage's)."""
        first = self.rank * self.batch_size
        rows = range(first, first + self.batch_size)  # this rank's rows of the global batch
        picked = {}
        for key in keys:
            idx = step_indices(
                self.seed, self.keys.index(key), len(self.sources[key]), step, self.batch_size * self.world_size
            )
            picked[key] = idx[first : first + self.batch_size].tolist()
        if self.choices:
            batches = [
                self.sources[key].__getitems__(
                    picked[key], choices=row_generators(self.seed, step, self.keys.index(key), "choice", rows)
                )
                for key in keys
            ]
        elif self.fetch is not None:
            batches = self.fetch([(self.sources[key], picked[key]) for key in keys])
        else:
            batches = [self.sources[key].__getitems__(picked[key]) for key in keys]
        out = {}
        for key, batch in zip(keys, batches, strict=True):
            if self.augment:
                batch = augment_batch(batch, self.augment, self.configs, self.seed, step, self.keys.index(key), rows)
            out[key] = batch
        return out


class StepSampler(Sampler[int]):
    """Yields global step numbers from ``start`` on (the step the run resumes at)."""

    def __init__(self, start: Callable[[], int] | int = 0) -> None:
        self._start = start

    def __iter__(self):
        start = self._start() if callable(self._start) else self._start
        return iter(range(start, MAX_STEPS))

    def __len__(self) -> int:
        return MAX_STEPS


def first_item(items):
    """collate_fn for datasets whose ``__getitems__`` already returns a whole batch."""
    return items if isinstance(items, dict) else items[0]


def ignore_preemption_signals(worker_id: int) -> None:
    """DataLoader worker init: SLURM signals every process of a job step; the main process handles them.

    Without this a SIGTERM/SIGUSR1 kills the workers first and the main process dies on a broken
    pipe instead of saving its preemption checkpoint. (Data of a step is a function of (seed, step),
    so workers need no seeding of their own.)
    """
    for name in ("SIGTERM", "SIGUSR1"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)


class StepLoader(DataLoader):
    """The training DataLoader of step-indexed batches; resumable by construction.

    Its position is the trainer's global step times ``accumulate_grad_batches`` (``StepSampler`` starts
    there), which the checkpoint already holds, so it has no state of its own to save. Saying so through
    Lightning's ``state_dict`` / ``load_state_dict`` interface is what tells Lightning the loader resumes
    mid-epoch exactly; without it every resume warned that results may be unreliable (an epoch of a
    100k-scene pool is 3125 steps, so nearly every resume is mid-epoch).
    """

    def state_dict(self) -> dict[str, Any]:
        return {"position": "trainer.global_step * trainer.accumulate_grad_batches"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore: the sampler reads the resumed global step when iteration starts."""


def step_loader(batches: StepBatches, trainer, num_workers: int, pin_memory: bool) -> DataLoader:
    """The training DataLoader: one item per batch (``trainer.accumulate_grad_batches`` per global step),
    starting at the trainer's (resumed) step."""
    start = (lambda: trainer.global_step * trainer.accumulate_grad_batches) if trainer is not None else 0
    return StepLoader(
        batches,
        batch_size=None,
        sampler=StepSampler(start),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=ignore_preemption_signals if num_workers > 0 else None,
    )


def heldout_loader(dataset: Dataset, batch_size: int, num_workers: int, pin_memory: bool) -> DataLoader:
    """Validation/test batches in a fixed order, whole batches from ``__getitems__``."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=first_item,
    )
