"""Webdataset-style tar shards of a manifest, and ``data=shards``, which streams them for large data.

A shard ``shard-000000.tar`` holds consecutive samples; each sample's files share one key, the
sample's position in the manifest (``000000042.json`` with id, label and manifest line,
``000000042.image.png``, ``000000042.text.txt``, ...), stored byte for byte as in the original
files. ``index.json`` beside the shards counts samples, modalities and pairs per shard. The files
are plain tar, so the ``webdataset`` library reads them too.

Streaming trades the exact step-indexed resume of ``data=manifest`` for never holding the sample
list: each edge reads only the shards holding its pair, in an order seeded by (seed, edge, pass,
start step), splits the shards over ranks and DataLoader workers, and shuffles within a buffer. A
resumed run starts a fresh shuffle instead of replaying the exact continuation.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import tarfile
import tempfile
import weakref
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bindspace.data.manifest import (
    INLINE_MODALITIES,
    Manifest,
    ManifestError,
    Sample,
    canonical,
    load_manifest,
    pair_key,
)
from bindspace.data.manifest_datamodule import (
    ManifestDataset,
    check_manifests,
    class_vocabulary,
    heldout_dataset,
)
from bindspace.data.readers import DataFileError
from bindspace.data.steps import heldout_loader
from bindspace.losses import Edge, edge_key
from bindspace.modalities import ConfigError, ModalityConfig, list_modalities
from bindspace.utils.io import atomic_write, atomic_write_json

FORMAT = "bindspace-shards/1"
INDEX_NAME = "index.json"
SHARD_NAME = "shard-{:06d}.tar"
Fields = dict[str, bytes]  # "json", "image.png", "text.txt", ... -> bytes


def sample_fields(sample: Sample) -> Fields:
    """The members of one sample, keyed by what follows ``<key>.`` in the tar."""
    meta = {"id": sample.id, "label": sample.label, "line": sample.line}
    fields = {"json": json.dumps(meta, ensure_ascii=False).encode("utf-8")}
    for m in canonical(sample.values):
        value = sample.values[m]
        if m in INLINE_MODALITIES:
            fields[f"{m}.txt"] = str(value).encode("utf-8")
        else:
            fields[f"{m}{Path(value).suffix.lower()}"] = Path(value).read_bytes()
    return fields


def _write_tar(f: BinaryIO, samples: Sequence[tuple[str, Sample]]) -> None:
    with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for key, sample in samples:
            for name, data in sample_fields(sample).items():
                info = tarfile.TarInfo(f"{key}.{name}")
                info.size, info.mode, info.mtime = len(data), 0o644, 0  # reproducible bytes
                tar.addfile(info, fileobj=io.BytesIO(data))


def _readable(path: Path) -> None:
    """Give a file the usual permissions: atomic writes create 0600 temporaries, but shards are shared data."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def write_shards(
    manifest: Manifest, out: str | Path, shard_size: int, check: bool = True, workers: int | None = None
) -> dict[str, Any]:
    """Write ``manifest`` as tar shards plus ``index.json`` into ``out``, each file atomically.

    Args:
        manifest: the samples to write (keys are their positions in it).
        out: folder for ``shard-NNNNNN.tar`` and ``index.json``; stale shards of an earlier run are removed.
        shard_size: samples per shard.
        check: decode every file first and fail on bad ones (pass False for an already checked manifest).
        workers: threads for the check.

    Returns:
        The index written to ``out/index.json``.
    """
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ConfigError(f"shard size must be a positive integer, got {shard_size!r}")
    if check:
        check_manifests([manifest], list_modalities(), "raise", workers)
    out = Path(out)
    keyed = [(f"{i:09d}", s) for i, s in enumerate(manifest.samples)]
    shards = []
    for n, start in enumerate(range(0, len(keyed), shard_size)):
        chunk = keyed[start : start + shard_size]
        name = SHARD_NAME.format(n)
        _readable(atomic_write(out / name, lambda f, chunk=chunk: _write_tar(f, chunk)))
        part = manifest.with_samples([s for _, s in chunk])
        shards.append(
            {"name": name, "samples": len(chunk), "modalities": part.modality_counts(), "pairs": part.pair_counts()}
        )
    for stale in out.glob("shard-*.tar"):
        if stale.name not in {s["name"] for s in shards}:
            stale.unlink()
    index = {
        "format": FORMAT,
        "manifest": str(manifest.path),
        "num_samples": len(keyed),
        "shard_size": shard_size,
        "modalities": manifest.modality_counts(),
        "pairs": manifest.pair_counts(),
        "labels": manifest.label_counts(),
        "shards": shards,
    }
    _readable(atomic_write_json(out / INDEX_NAME, index))  # last: a complete index means a complete set
    return index


def load_index(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """``(folder, index)`` from a shard folder or its ``index.json``."""
    path = Path(path)
    file = path / INDEX_NAME if path.is_dir() else path
    try:
        index = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ManifestError(
            f"{file}: cannot read the shard index ({err}); write shards with `bindspace-data shard`"
        ) from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ManifestError(f"{file}: not a {FORMAT} index")
    return file.parent, index


def iter_shard(path: Path, modalities: Collection[str] | None = None) -> Iterator[tuple[str, Fields]]:
    """``(key, fields)`` of each sample in a shard, in stored order.

    Args:
        path: the tar file.
        modalities: read only these modalities' members (and ``json``); the others are seeked over.
    """
    key, fields = None, {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                k, _, name = Path(member.name).name.partition(".")
                if key is not None and k != key:
                    yield key, fields
                    fields = {}
                key = k
                if modalities is None or name == "json" or name.partition(".")[0] in modalities:
                    fields[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError) as err:
        raise DataFileError(path, f"cannot read tar shard: {err}") from err
    if key is not None:
        yield key, fields


def materialize(key: str, fields: Fields, folder: Path) -> Sample:
    """A Sample whose files are written into ``folder`` (the readers decode files, not bytes)."""
    meta = json.loads(fields["json"])
    values: dict[str, str | Path] = {}
    for name, data in fields.items():
        modality, _, _ = name.partition(".")
        if name == "json":
            continue
        if modality in INLINE_MODALITIES:
            values[modality] = data.decode("utf-8")
        else:
            values[modality] = folder / f"{key}.{name}"
            values[modality].write_bytes(data)
    return Sample(int(meta.get("line") or 0), meta["id"], meta.get("label"), values)


def extract_shards(path: str | Path, out: str | Path) -> Manifest:
    """Unpack a shard set into ``out`` with a ``manifest.jsonl`` that lists it (used for held-out sets)."""
    folder, index = load_index(path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for shard in index["shards"]:
        for key, fields in iter_shard(folder / shard["name"]):
            s = materialize(key, fields, out)
            row = {"id": s.id, "label": s.label}
            row.update({m: (v if m in INLINE_MODALITIES else Path(v).name) for m, v in s.values.items()})
            lines.append(json.dumps({k: v for k, v in row.items() if v is not None}, ensure_ascii=False))
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_manifest(out / "manifest.jsonl")


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


class ShardDataModule(L.LightningDataModule):
    """Streams training shards written by ``bindspace-data shard``; held-out sets from a manifest or shards.

    Args:
        configs, edges, batch_size, seed: as :class:`ManifestDataModule`.
        train: a shard folder (or its ``index.json``).
        val: held-out data, required: a manifest (JSONL/CSV) or a shard folder (unpacked to a temp folder).
        test: the final gallery; default: the validation set.
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

    def val_dataloader(self) -> DataLoader:
        return heldout_loader(self.val_set, self.batch_size, self.num_workers, self.pin_memory)

    def test_dataloader(self) -> DataLoader:
        return heldout_loader(self.test_set, self.batch_size, self.num_workers, self.pin_memory)
