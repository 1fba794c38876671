"""``data=shards``: stream webdataset-style tar shards (written by :mod:`bindspace.data.shards`) for large data.

Streaming trades the exact step-indexed resume of ``data=manifest`` for never holding the sample
list: each edge reads only the shards holding its pair, in an order seeded by (seed, edge, pass,
start step), splits the shards over ranks and DataLoader workers, and shuffles within a buffer. A
resumed run starts a fresh shuffle instead of replaying the exact continuation. Under a curriculum each
step streams the edges of its own stage, known from the step (:meth:`ShardStream.step_keys`), so workers
rendering ahead of training never lag behind a stage change.

Every shard is indexed when the datamodule is built, before any model exists: each member's name,
header and size, and each sample's JSON (payloads are not decoded). A bad shard fails the run with one
line naming the shard and the member (``on_error="raise"``) or loses its bad samples, counted in
``data_report`` (``on_error="skip"``). A member that only turns out bad when decoded during training
follows the same setting: a ``DataFileError`` naming the shard and the member, or the sample is
dropped, replaced and counted.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bindspace.data import provided
from bindspace.data.augment import augment_batch
from bindspace.data.base import PairedDataModule, check_split, sample_captions
from bindspace.data.manifest import (
    Manifest,
    ManifestError,
    check_workers,
    drop_samples,
    load_manifest,
    pair_key,
    scan_files,
)
from bindspace.data.manifest_datamodule import (
    ON_ERROR,
    ManifestDataset,
    check_manifests,
    class_vocabulary,
    existing_path,
    heldout_dataset,
    stable_group_id,
)
from bindspace.data.shards import (
    INDEX_NAME,
    Fields,
    check_identity,
    check_shards,
    extract_shards,
    iter_shard,
    load_index,
    materialize,
    usable_index,
)
from bindspace.data.steps import ignore_preemption_signals
from bindspace.errors import ConfigError, DataFileError
from bindspace.graph import Edge, edge_key
from bindspace.modalities import ModalityConfig
from bindspace.modalities.files import InMemoryFile

log = logging.getLogger("bindspace.data")
Row = tuple[str, Fields, Path]  # a sample's key, its members, and the shard it came from
FIX = "rewrite the shard with `bindspace-data shard`, or set data.on_error=skip to leave out its bad samples"


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


def _distinct(stream: Iterator[Row], n: int, rows: Sequence[Row] = ()) -> list[Row]:
    """``rows`` topped up to ``n`` samples, skipping repeats of a key (a repeat is a false negative in the batch).

    Repeats happen where a pass wraps around inside the shuffle buffer; after ``4 n`` draws they are
    accepted, so a reader holding fewer than ``n`` samples still makes progress.
    """
    rows, tries = list(rows), 0
    keys = {row[0] for row in rows}
    while len(rows) < n:
        row = next(stream)
        tries += 1
        if row[0] not in keys or tries > 4 * n:
            rows.append(row)
            keys.add(row[0])
    return rows


class WorkerFailure:
    """A user error (a ConfigError such as DataFileError) met in a DataLoader worker, sent on as an item.

    torch re-raises a worker's exception in the main process as a RuntimeError holding the worker's
    traceback; :class:`ShardLoader` raises the error itself instead, with its one-line message.
    """

    def __init__(self, error: ConfigError) -> None:
        self.error = error


class _Reraising:
    """A DataLoader iterator that raises the error of a :class:`WorkerFailure` item, after stopping the workers."""

    def __init__(self, iterator: Iterator, loader: ShardLoader) -> None:
        self._iterator, self._loader = iterator, loader

    def __iter__(self) -> _Reraising:
        return self

    def __next__(self) -> Any:
        item = next(self._iterator)
        if isinstance(item, WorkerFailure):
            error, item.error = item.error, None
            self._loader.close()
            try:
                raise error
            finally:
                del error  # no frame -> error -> traceback -> frame cycle keeps the loader alive

        return item


class ShardLoader(DataLoader):
    """The training DataLoader of ``data=shards``: a worker's DataFileError reaches the caller as itself."""

    def __iter__(self) -> _Reraising:
        return _Reraising(super().__iter__(), self)

    def close(self) -> None:
        """Stop the (persistent) worker processes now; they ignore SIGTERM, so they have to be told."""
        iterator = getattr(self, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self._iterator = None


class ShardStream(IterableDataset):
    """Endless ``{edge key: batch}`` steps from shards, for the edges of each step's curriculum stage.

    A worker renders steps ahead of training, so it cannot ask which stage is current: the stage of a step
    follows from ``stage_starts``. Where a stage's start is not known in advance (after a plateau stage),
    every edge of the stages it may belong to is drawn, and the main process keeps the current stage's
    (``PairedDataModule.on_before_batch_transfer``): what a step trains never depends on prefetching.

    Shards of a pass go round-robin to the ``world_size x num_workers`` readers; with fewer shards
    than readers, every reader scans all shards and keeps every n-th sample instead.

    Args:
        on_error: ``raise``: a member that fails to decode raises a DataFileError naming the shard and the
            member; ``skip``: its sample is dropped (never read again by this reader), replaced and counted
            in ``skipped``.
        skip: shard name -> keys of samples to leave out (found bad by the startup check).
        readers: DataLoader workers per process (one ``skipped`` counter each).
        stage_starts: the global step each stage of ``stage_edges`` starts at, None where not known in advance
            (default: only the first's).
        accumulate: items per global step (``trainer.accumulate_grad_batches``); items start at
            ``start_step x accumulate``.
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
        on_error: str = "raise",
        skip: Mapping[str, Collection[str]] | None = None,
        readers: int = 1,
        augment: Mapping[str, Any] | None = None,
        stage_starts: Sequence[int | None] | None = None,
        accumulate: int = 1,
    ) -> None:
        self.augment = {m: a for m, a in (augment or {}).items() if a}
        # The set names groups: every batch carries ids that agree across batches and ranks (hashed keys).
        self.groups = int(index.get("grouped_samples", 0)) > 0
        self.edges = {edge_key(e): tuple(e) for e in edges}
        self.keys = list(self.edges)
        self.shards = {
            k: [folder / s["name"] for s in index["shards"] if s["pairs"].get(pair_key(*e))]
            for k, e in self.edges.items()
        }
        self.stage_edges = [[edge_key(e) for e in edges] for edges in stage_edges]
        self.stage_starts = list(stage_starts) if stage_starts is not None else [0] + [None] * (len(stage_edges) - 1)
        self.accumulate = accumulate
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.configs, self.class_index = dict(configs), class_index
        self.shuffle_buffer, self.start_step = shuffle_buffer, start_step
        self.on_error = on_error
        self.skip = {folder / name: frozenset(keys) for name, keys in (skip or {}).items()}
        self.stage = torch.zeros(1, dtype=torch.int64).share_memory_()
        # Samples dropped while training (on_error=skip), one slot per worker; shared with the main process.
        self.skipped = torch.zeros(max(1, readers), dtype=torch.int64).share_memory_()
        self._bad: set[tuple[Path, str]] = set()  # (shard, key) found bad by this reader
        self._slot = 0

    def set_stage(self, index: int) -> None:
        """The current stage, in the main process (workers draw each step's stage by ``stage_starts``)."""
        self.stage[0] = index

    def stage_keys(self) -> list[str]:
        """Keys of the edges of the current stage."""
        return self.stage_edges[int(self.stage[0])]

    def step_keys(self, step: int) -> list[str]:
        """Keys of the edges drawn at global step ``step``: its stage's, or, where that stage is not known in
        advance, those of every stage it may be (the last stage with a known start, and all after it)."""
        known = [i for i, start in enumerate(self.stage_starts) if start is not None and start <= step]
        i = known[-1]
        if i + 1 < len(self.stage_starts) and self.stage_starts[i + 1] is None:
            later = {k for keys in self.stage_edges[i:] for k in keys}
            return [k for k in self.keys if k in later]
        return self.stage_edges[i]

    def __iter__(self) -> Iterator[dict[str, dict[str, Any]] | WorkerFailure]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        split, splits = self.rank * workers + worker, self.world_size * workers
        self._slot = worker % len(self.skipped)
        streams: dict[str, Iterator[Row]] = {}
        rows = range(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        try:
            # The DataLoader takes workers' items in turn: this worker's are worker, worker + workers, ...
            for item in itertools.count(self.start_step * self.accumulate + worker, workers):
                out = {}
                for key in self.step_keys(item // self.accumulate):
                    if key not in streams:
                        streams[key] = self._edge_stream(key, split, splits)
                    out[key] = self._next_batch(key, streams[key])
                    if self.augment:
                        edge = self.keys.index(key)
                        out[key] = augment_batch(out[key], self.augment, self.configs, self.seed, item, edge, rows)
                yield out
        except ConfigError as err:
            if info is None:
                raise
            yield WorkerFailure(err)  # ShardLoader raises it in the main process, as itself

    def _edge_stream(self, key: str, split: int, splits: int) -> Iterator[Row]:
        e, shards, i = self.edges[key], self.shards[key], self.keys.index(key)
        dead: set[Path] = set()  # shards that could not be read to their end (on_error=skip)

        def samples() -> Iterator[Row]:
            for epoch in itertools.count():
                order = np.random.default_rng([self.seed, i, epoch, self.start_step]).permutation(len(shards))
                by_shard = len(shards) >= splits
                found = 0
                for s in order[split::splits] if by_shard else order:
                    shard = shards[s]
                    if shard in dead:
                        continue
                    left_out = self.skip.get(shard, frozenset())
                    try:
                        for k, fields in iter_shard(shard, e):
                            if k in left_out or (shard, k) in self._bad:
                                continue
                            if len(fields) == 3 and (by_shard or int(k) % splits == split):
                                found += 1
                                yield k, fields, shard
                    except DataFileError as err:  # the shard changed on disk after the startup check
                        if self.on_error == "raise":
                            raise DataFileError(err.path, f"{err.reason}; {FIX}") from None
                        dead.add(shard)
                        self._count_skipped(err)
                if not found:
                    named = ", ".join(str(p) for p in shards[:3]) + (" ..." if len(shards) > 3 else "")
                    raise ManifestError(
                        f"edge {key}: reader {split} of {splits} found no usable samples in {len(shards)} shard(s): "
                        f"{named}"
                    )

        rng = np.random.default_rng([self.seed, i, split, self.start_step])
        return _shuffled(samples(), self.shuffle_buffer, rng)

    def _count_skipped(self, err: DataFileError) -> None:
        self.skipped[self._slot] += 1
        log.warning("data.on_error=skip: left out a training sample: %s", err)

    def _next_batch(self, key: str, stream: Iterator[Row]) -> dict[str, Any]:
        """A batch of distinct samples; a sample with a bad member raises, or is replaced (on_error=skip)."""
        rows = _distinct(stream, self.batch_size)
        while True:
            rows = [r for r in rows if (r[2], r[0]) not in self._bad]  # copies still in the shuffle buffer
            if len(rows) < self.batch_size:
                rows = _distinct(stream, self.batch_size, rows)
                continue
            try:
                return self._batch(key, rows)
            except DataFileError as err:
                row = getattr(err, "row", None)
                if self.on_error == "raise" or row is None:
                    raise DataFileError(err.path, f"{err.reason}; {FIX}") from None
                self._bad.add((rows[row][2], rows[row][0]))
                self._count_skipped(err)

    def _batch(self, key: str, rows: list[Row]) -> dict[str, Any]:
        """Decode ``rows`` in memory; a bad member raises DataFileError naming shard and member (``.row``: its row)."""
        samples, members = [], {}
        for i, (k, fields, shard) in enumerate(rows):
            try:
                sample = materialize(k, fields, source=shard)
            except DataFileError as err:
                err.row = i
                raise
            samples.append(sample)
            members.update({Path(v.name): i for v in sample.values.values() if isinstance(v, InMemoryFile)})
        try:
            batch = ManifestDataset(samples, self.edges[key], self.configs, self.class_index).__getitems__(
                range(len(rows))
            )
        except DataFileError as err:
            i = members.get(err.path)
            if i is None:
                raise
            bad = DataFileError(rows[i][2], f"member {err.path.name}: {err.reason}")
            bad.row = i
            raise bad from None
        batch["id"] = torch.as_tensor([int(k) for k, _, _ in rows], dtype=torch.long)  # positions in the manifest
        if self.groups:  # not the batch-local ids ManifestDataset numbers: ranks compare theirs in the loss
            batch["group"] = torch.as_tensor([stable_group_id(s) for s in samples], dtype=torch.long)
        return batch


class ShardSet(NamedTuple):
    """A checked shard set: what :func:`check_shard_set` found usable."""

    folder: Path
    index: dict[str, Any]  # recounted without unreadable shards and bad samples
    skip: dict[str, frozenset[str]]  # shard name -> keys of bad samples to leave out
    owners: dict[str, Path]  # key of every usable sample -> its shard
    report: dict[str, int]  # counts for the data report


def check_shard_set(path: str | Path, on_error: str, workers: int | None = None) -> ShardSet:
    """Index every shard of a set (:func:`~bindspace.data.shards.check_shards`) and apply ``on_error``.

    Raises:
        DataFileError: with ``on_error="raise"``, the first problem, naming the shard and the member.
    """
    folder, listed = load_index(path)
    checks = check_shards(folder, listed, workers)
    problems = [(c.path, p) for c in checks for p in c.problems]
    if problems and on_error == "raise":
        shard, first = problems[0]
        bad = sum(1 for c in checks if c.problems)
        more = f" (and {len(problems) - 1} more problem(s) in {bad} shard(s) of {folder})" if len(problems) > 1 else ""
        raise DataFileError(shard, f"{first}{more}; {FIX}")
    index = usable_index(listed, checks)
    report = {
        "shards": len(checks),
        "unreadable_shards": sum(c.unreadable for c in checks),
        "bad_members": len(problems),
        "skipped_samples": max(0, sum(int(e["samples"]) for e in listed["shards"]) - index["num_samples"]),
    }
    if problems:
        log.warning(
            "data.on_error=skip: left out %d sample(s) of %s (%d unreadable shard(s), %d problem(s)); first: %s: %s",
            report["skipped_samples"], folder, report["unreadable_shards"], len(problems), *problems[0],
        )  # fmt: skip
    skip = {c.path.name: frozenset(c.bad_keys) for c in checks if c.bad_keys and not c.unreadable}
    owners = {k: c.path for c in checks if not c.unreadable for k in c.samples if k not in c.bad_keys}
    return ShardSet(folder, index, skip, owners, report)


def is_shard_set(path: str | Path) -> bool:
    """Whether a held-out path names a shard set (its folder or its ``index.json``) rather than a manifest."""
    return Path(path).is_dir() or Path(path).name == INDEX_NAME


class ShardDataModule(PairedDataModule):
    """Streams training shards written by ``bindspace-data shard``; held-out sets from a manifest or shards.

    Args:
        configs, edges, batch_size, seed: as :class:`ManifestDataModule`.
        train: a shard folder (or its ``index.json``).
        val: held-out data, required: a manifest (JSONL/CSV) or a shard folder (unpacked to a temp folder).
        test: the final gallery; default: the validation set (``bindspace-eval`` then fits on one half of it
            and scores the other, split by sample id).
        on_error: ``raise`` (a bad shard, member or held-out file fails the run, at startup when the check can
            see it, else when the member is decoded) or ``skip`` (drop the bad samples, counted in ``data_report``).
        num_workers, pin_memory: DataLoader settings.
        shuffle_buffer: samples per edge buffered for shuffling, per reader.
        scan_workers: threads checking the held-out files at startup (default ``min(32, cpus + 4)``), and
            indexing the shards (default one: tar headers are parsed under the GIL; more help on network storage).
    """

    @classmethod
    def provided_modalities(cls, train: str | None = None, **_: Any) -> list[str]:
        """The modalities the shard set's ``index.json`` counts, in registry order (no shard is opened)."""
        return provided.shards(train=train)

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
        super().__init__(configs, edges, batch_size, seed, num_workers, pin_memory)
        check_workers(scan_workers, "data.scan_workers")
        if train is None or val is None:
            raise ConfigError("data=shards needs data.train=SHARD_FOLDER and data.val=MANIFEST_OR_SHARD_FOLDER")
        for key, path in (("train", train), ("val", val), ("test", test)):
            if path is not None:
                existing_path(path, f"data.{key}")  # named by key, before any shard or file is read
        if not isinstance(shuffle_buffer, int) or shuffle_buffer < 1:
            raise ConfigError(f"data.shuffle_buffer must be a positive integer, got {shuffle_buffer!r}")
        if on_error not in ON_ERROR:
            raise ConfigError(f"data.on_error must be one of {list(ON_ERROR)}, got {on_error!r}")
        self.shuffle_buffer, self.on_error = shuffle_buffer, on_error
        for path in (val, test):  # held-out shards need their samples' identity: refused before any shard is read
            if path is not None and is_shard_set(path):
                check_identity(*load_index(path))
        shards = check_shard_set(train, on_error, scan_workers)  # before any held-out file is decoded
        self.folder, self.index, self.skip, shard_report = shards.folder, shards.index, shards.skip, shards.report
        self.pairs = {edge_key(e): int(self.index["pairs"].get(pair_key(*e), 0)) for e in self.edges}
        grouped, groups = int(self.index.get("grouped_samples", 0)), int(self.index.get("groups", 0))
        if grouped and groups == grouped:
            warnings.warn(
                f"data: {self.folder}: every group of the shards' group column has one member; "
                "multi-positive losses are then the plain ones",
                stacklevel=2,
            )
        for key, count in self.pairs.items():
            if count < batch_size:
                raise ManifestError(
                    f"edge {key}: {count} samples in {self.folder}, fewer than data.batch_size={batch_size}"
                )
        self._tmp = tempfile.mkdtemp(prefix="bindspace-heldout-")
        weakref.finalize(self, shutil.rmtree, self._tmp, True)
        sets, files, manifests = {}, {}, []
        for path, name in ((val, "val"), (test, "test")):
            if path is None:
                continue
            if is_shard_set(path):
                sets[name], files[str(path)] = self._heldout_shards(Path(path), name, scan_workers)
            else:
                manifests.append((name, load_manifest(path)))
        checked, reports = check_manifests([m for _, m in manifests], list(self.configs), on_error, scan_workers)
        sets.update((name, m) for (name, _), m in zip(manifests, checked))
        files.update(reports)
        samples = [s for m in sets.values() for s in m.samples]
        labels = self.index["labels"]
        self.class_names = sorted(set(labels) | set(class_vocabulary(samples)))
        class_index = {name: i for i, name in enumerate(self.class_names)} or None
        self.val_set = heldout_dataset(sets["val"].samples, self.configs, class_index, "val")
        self.test_set = (
            heldout_dataset(sets["test"].samples, self.configs, class_index, "test") if test else self.val_set
        )
        # Training batches carry labels only when every training sample has one.
        self.train_class_index = class_index if sum(labels.values()) == self.index["num_samples"] else None
        self.skipped = sum(r["skipped_samples"] for r in files.values()) + shard_report["skipped_samples"]
        self._report = {
            "manifests": files,
            "shards": shard_report,
            "train_samples": self.index["num_samples"],
            "edges": self.pairs,
            "val_samples": len(self.val_set),
            "test_samples": len(self.test_set),
            "classes": len(self.class_names),
        }
        self._skipped_earlier = 0  # dropped while training by streams replaced since

    @property
    def data_report(self) -> dict[str, Any]:
        """Counts of the data read, with the samples ``on_error=skip`` dropped at startup and while training.

        ``shards.skipped_while_training`` counts drops: a bad member met by two readers (ranks are counted
        apart; this is the local rank's count) or after the loader was rebuilt counts twice.
        """
        during = self._skipped_earlier + (int(self.train_steps.skipped.sum()) if self.train_steps else 0)
        shards = {**self._report["shards"], "skipped_while_training": during}
        return {**self._report, "shards": shards, "skipped": self.skipped + during}

    def _heldout_shards(self, path: Path, name: str, workers: int | None) -> tuple[Manifest, dict[str, int]]:
        """A held-out shard set: indexed, unpacked and every file decoded; problems name the shard and member."""
        shards = check_shard_set(path, self.on_error, workers)
        keep = {s["name"]: shards.skip.get(s["name"], ()) for s in shards.index["shards"]}
        manifest = extract_shards(path, Path(self._tmp) / name, keep)
        problems = scan_files(manifest, list(self.configs), workers)
        if problems and self.on_error == "raise":
            p = problems[0]
            member = p.path.name  # extracted as <key>.<field>, the member's own name
            more = f" (and {len(problems) - 1} more bad member(s) in {shards.folder})" if len(problems) > 1 else ""
            reason = p.reason.replace(str(p.path), member)
            shard = shards.owners.get(member.partition(".")[0], shards.folder)
            raise DataFileError(shard, f"member {member}: {reason}{more}; {FIX}")
        kept, dropped = drop_samples(manifest, problems)
        if dropped:
            log.warning("data.on_error=skip: left out %d sample(s) of %s with bad members", dropped, shards.folder)
        report = {
            "samples": len(manifest.samples) + shards.report["skipped_samples"],
            "bad_files": len(problems) + shards.report["bad_members"],
            "skipped_samples": dropped + shards.report["skipped_samples"],
        }
        return kept, report

    def edge_sizes(self) -> dict[str, int]:
        return dict(self.pairs)

    def heldout_set(self, split: str) -> ManifestDataset:
        return self.val_set if check_split(split) == "val" else self.test_set

    def captions(self) -> list[str]:
        """The held-out sets' captions: training shards are not read ahead of training."""
        return sample_captions(self.heldout_sets())

    def train_dataloader(self) -> DataLoader:
        """A stream per rank and worker, starting at the trainer's global step (``ShardStream``)."""
        rank, world = self.rank_and_world()
        readers = world * max(1, self.num_workers)
        for key, count in self.pairs.items():
            if count < readers:
                raise ConfigError(f"edge {key}: {count} samples cannot feed {readers} readers (ranks x workers)")
        if self.train_steps is not None:
            self._skipped_earlier += int(self.train_steps.skipped.sum())
        trainer = self.trainer
        self.train_steps = ShardStream(
            self.folder, self.index, self.edges, self.stage_edges, self.batch_size, self.seed, self.configs,
            self.train_class_index, rank, world, self.shuffle_buffer, trainer.global_step if trainer else 0,
            self.on_error, self.skip, max(1, self.num_workers), self.augmentations(), self.stage_starts,
            trainer.accumulate_grad_batches if trainer else 1,
        )  # fmt: skip
        return ShardLoader(
            self.train_steps,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=ignore_preemption_signals if self.num_workers > 0 else None,
        )

    @property
    def train_stream(self) -> ShardStream | None:
        """The training stream built last (``train_steps``; kept under the name it had before the base class)."""
        return self.train_steps
