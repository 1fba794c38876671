"""``data=shards``: stream webdataset-style tar shards (written by :mod:`bindspace.data.shards`) for large data.

Streaming trades the exact step-indexed resume of ``data=manifest`` for never holding the sample
list: each edge reads only the shards holding its pair, in an order seeded by (seed, edge, pass,
start step), splits the shards over ranks and DataLoader workers, and shuffles within a buffer. A
resumed run starts a fresh shuffle instead of replaying the exact continuation.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bindspace.data.manifest import (
    Manifest,
    ManifestError,
    load_manifest,
    pair_key,
)
from bindspace.data.manifest_datamodule import (
    ManifestDataset,
    check_manifests,
    class_vocabulary,
    existing_path,
    heldout_dataset,
)
from bindspace.data.shards import INDEX_NAME, Fields, extract_shards, iter_shard, load_index, materialize
from bindspace.data.steps import HeldoutLoaders
from bindspace.losses import Edge, edge_key
from bindspace.modalities import ConfigError, ModalityConfig


def _shuffled(items: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """Shuffle an endless stream within a buffer of ``size`` items."""
    buffer = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = int(rng.integers(size))
        yield buffer[i]
        buffer[i] = item


def _distinct(stream: Iterator[tuple[str, Fields]], n: int) -> list[tuple[str, Fields]]:
    """``n`` samples, skipping repeats of a key (a repeat is a false negative in the contrastive batch).

    Repeats happen where a pass wraps around inside the shuffle buffer; after ``4 n`` draws they are
    accepted, so a reader holding fewer than ``n`` samples still makes progress.
    """
    rows, keys, tries = [], set(), 0
    while len(rows) < n:
        key, fields = next(stream)
        tries += 1
        if key not in keys or tries > 4 * n:
            rows.append((key, fields))
            keys.add(key)
    return rows


class ShardStream(IterableDataset):
    """Endless ``{edge key: batch}`` steps from shards, for the edges of the current curriculum stage.

    Shards of a pass go round-robin to the ``world_size x num_workers`` readers; with fewer shards
    than readers, every reader scans all shards and keeps every n-th sample instead.
    """

    def __init__(
        self,
        folder: Path,
        index: Mapping[str, Any],
        edges: Sequence[Edge],
        stage_edges: Sequence[Sequence[Edge]],
        batch_size: int,
        seed: int,
        configs: Mapping[str, ModalityConfig],
        class_index: Mapping[str, int] | None,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 1000,
        start_step: int = 0,
    ) -> None:
        self.edges = {edge_key(e): tuple(e) for e in edges}
        self.keys = list(self.edges)
        self.shards = {
            k: [folder / s["name"] for s in index["shards"] if s["pairs"].get(pair_key(*e))]
            for k, e in self.edges.items()
        }
        self.stage_edges = [[edge_key(e) for e in edges] for edges in stage_edges]
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.configs, self.class_index = dict(configs), class_index
        self.shuffle_buffer, self.start_step = shuffle_buffer, start_step
        self.stage = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_stage(self, index: int) -> None:
        self.stage[0] = index

    def __iter__(self) -> Iterator[dict[str, dict[str, Any]]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        split, splits = self.rank * workers + worker, self.world_size * workers
        streams: dict[str, Iterator] = {}
        with tempfile.TemporaryDirectory(prefix="bindspace-shards-") as tmp:
            while True:
                out = {}
                for key in self.stage_edges[int(self.stage[0])]:
                    if key not in streams:
                        streams[key] = self._edge_stream(key, split, splits)
                    rows = _distinct(streams[key], self.batch_size)
                    out[key] = self._batch(key, rows, Path(tmp))
                yield out

    def _edge_stream(self, key: str, split: int, splits: int) -> Iterator[tuple[str, Fields]]:
        e, shards, i = self.edges[key], self.shards[key], self.keys.index(key)

        def samples() -> Iterator[tuple[str, Fields]]:
            for epoch in itertools.count():
                order = np.random.default_rng([self.seed, i, epoch, self.start_step]).permutation(len(shards))
                by_shard = len(shards) >= splits
                found = 0
                for s in order[split::splits] if by_shard else order:
                    for k, fields in iter_shard(shards[s], e):
                        if len(fields) == 3 and (by_shard or int(k) % splits == split):
                            found += 1
                            yield k, fields
                if not found:
                    raise ManifestError(
                        f"edge {key}: reader {split} of {splits} found no samples in {len(shards)} shards"
                    )

        rng = np.random.default_rng([self.seed, i, split, self.start_step])
        return _shuffled(samples(), self.shuffle_buffer, rng)

    def _batch(self, key: str, rows: list[tuple[str, Fields]], tmp: Path) -> dict[str, Any]:
        samples = [materialize(k, f, tmp) for k, f in rows]
        try:
            batch = ManifestDataset(samples, self.edges[key], self.configs, self.class_index).__getitems__(
                range(len(rows))
            )
        finally:
            for s in samples:
                for v in s.values.values():
                    if isinstance(v, Path):
                        v.unlink(missing_ok=True)
        batch["id"] = torch.as_tensor([int(k) for k, _ in rows], dtype=torch.long)  # positions in the manifest
        return batch


class ShardDataModule(HeldoutLoaders, L.LightningDataModule):
    """Streams training shards written by ``bindspace-data shard``; held-out sets from a manifest or shards.

    Args:
        configs, edges, batch_size, seed: as :class:`ManifestDataModule`.
        train: a shard folder (or its ``index.json``).
        val: held-out data, required: a manifest (JSONL/CSV) or a shard folder (unpacked to a temp folder).
        test: the final gallery; default: the validation set (``bindspace-eval`` then fits on one half of it
            and scores the other, split by sample id).
        on_error: ``raise`` or ``skip`` bad files of the held-out manifests (training shards were checked when written).
        num_workers, pin_memory: DataLoader settings.
        shuffle_buffer: samples per edge buffered for shuffling, per reader.
        scan_workers: threads checking the held-out files at startup.
    """

    def __init__(
        self,
        configs: Mapping[str, ModalityConfig],
        edges: Sequence[Edge],
        batch_size: int = 64,
        seed: int = 0,
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        on_error: str = "raise",
        num_workers: int = 0,
        pin_memory: bool = False,
        shuffle_buffer: int = 1000,
        scan_workers: int | None = None,
    ) -> None:
        super().__init__()
        if train is None or val is None:
            raise ConfigError("data=shards needs data.train=SHARD_FOLDER and data.val=MANIFEST_OR_SHARD_FOLDER")
        for key, path in (("train", train), ("val", val), ("test", test)):
            if path is not None:
                existing_path(path, f"data.{key}")  # named by key, before any shard or file is read
        if not isinstance(shuffle_buffer, int) or shuffle_buffer < 1:
            raise ConfigError(f"data.shuffle_buffer must be a positive integer, got {shuffle_buffer!r}")
        self.configs, self.edges = dict(configs), [tuple(e) for e in edges]
        self.batch_size, self.seed, self.shuffle_buffer = batch_size, seed, shuffle_buffer
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.folder, self.index = load_index(train)
        self.pairs = {edge_key(e): int(self.index["pairs"].get(pair_key(*e), 0)) for e in self.edges}
        for key, count in self.pairs.items():
            if count < batch_size:
                raise ManifestError(
                    f"edge {key}: {count} samples in {self.folder}, fewer than data.batch_size={batch_size}"
                )
        self._tmp = tempfile.mkdtemp(prefix="bindspace-heldout-")
        weakref.finalize(self, shutil.rmtree, self._tmp, True)
        heldout = [self._heldout(p, name) for p, name in ((val, "val"), (test, "test")) if p is not None]
        heldout, files = check_manifests(heldout, list(self.configs), on_error, scan_workers)
        samples = [s for m in heldout for s in m.samples]
        labels = self.index["labels"]
        self.class_names = sorted(set(labels) | set(class_vocabulary(samples)))
        class_index = {name: i for i, name in enumerate(self.class_names)} or None
        self.val_set = heldout_dataset(heldout[0].samples, self.configs, class_index, "val")
        self.test_set = heldout_dataset(heldout[1].samples, self.configs, class_index, "test") if test else self.val_set
        # Training batches carry labels only when every training sample has one.
        self.train_class_index = class_index if sum(labels.values()) == self.index["num_samples"] else None
        self.skipped = sum(r["skipped_samples"] for r in files.values())
        self.data_report = {
            "manifests": files,
            "skipped": self.skipped,
            "train_samples": self.index["num_samples"],
            "edges": self.pairs,
            "val_samples": len(self.val_set),
            "test_samples": len(self.test_set),
            "classes": len(self.class_names),
        }
        self.stage_edges: list[list[Edge]] = [list(self.edges)]
        self.train_stream: ShardStream | None = None

    def _heldout(self, path: str, name: str) -> Manifest:
        p = Path(path)
        if p.is_dir() or p.name == INDEX_NAME:
            return extract_shards(p, Path(self._tmp) / name)
        return load_manifest(p)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        readers = world * max(1, self.num_workers)
        for key, count in self.pairs.items():
            if count < readers:
                raise ConfigError(f"edge {key}: {count} samples cannot feed {readers} readers (ranks x workers)")
        self.train_stream = ShardStream(
            self.folder, self.index, self.edges, self.stage_edges, self.batch_size, self.seed, self.configs,
            self.train_class_index, rank, world, self.shuffle_buffer, trainer.global_step if trainer else 0,
        )  # fmt: skip
        return DataLoader(
            self.train_stream,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def steps_per_epoch(self, world_size: int = 1) -> int:
        """Steps in one pass over the edge with the most samples."""
        return max(1, max(self.pairs.values()) // (self.batch_size * world_size))

    def set_stage(self, index: int) -> None:
        if self.train_stream is not None:
            self.train_stream.set_stage(index)
