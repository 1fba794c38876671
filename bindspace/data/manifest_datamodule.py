"""``data=manifest``: train on your own paired files listed in JSONL/CSV manifests (``docs/data.md``).

Every edge draws from the training samples that hold both of its modalities. Several manifests
(``sources``) can be mixed with sampling weights: each edge's pool is the concatenation of its
eligible samples from every source, up-sampled so that a draw comes from source ``k`` with
probability ``weight_k / sum(weights)``. The pool is a fixed virtual index, so the step-indexed
order of ``steps.py`` (data of step ``s`` = f(seed, s), exact resume, any world size) holds as is.

Every file is decoded once when the datamodule is built, before any model exists: bad files either
fail the run with their list (``on_error="raise"``) or drop their samples, counted in
``data_report`` (``on_error="skip"``). Audio decoded then is kept at the model's sample rate
(``audio_cache_gb``; ``bindspace.data.resample``), so steps neither decode nor resample it again.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from bindspace.data import provided
from bindspace.data.base import PairedDataModule, check_split
from bindspace.data.checks import small_heldout_message
from bindspace.data.manifest import (
    CAPTION_MODES,
    FileProblem,
    Manifest,
    ManifestError,
    Sample,
    check_workers,
    drop_samples,
    existing_path,
    expand_alternatives,
    format_problems,
    is_inline,
    load_manifest,
    parse_sources,
    qualified_key,
    scan_files,
    source_key,
    split_by_id,
)
from bindspace.data.resample import DecodedAudio, prepare
from bindspace.errors import ConfigError
from bindspace.graph import Edge, edge_key
from bindspace.modalities import ModalityConfig, ModelInput, collate_inputs, get_modality

log = logging.getLogger("bindspace.data")
Batch = dict[str, Any]
ON_ERROR = ("raise", "skip")
# A weighted pool may up-sample its sources; past this many slots per real sample the weights are too extreme.
MAX_POOL_RATIO = 16


def load_inputs(
    modality: str, values: Sequence[str | Path], cfg: ModalityConfig, decoded: Mapping[Path, Any] | None = None
) -> ModelInput:
    """Decode and transform one modality of a batch: texts inline, files through the readers.

    ``decoded``: files already decoded (and prepared: audio at the model's rate), by path; the others
    are read now, audio resampled with a kernel built once per rate pair.
    """
    spec = get_modality(modality)
    if is_inline(modality):
        return spec.transform_batch(list(values), cfg.input)

    def raw(value: Any) -> Any:
        kept = decoded.get(value) if decoded and isinstance(value, str | Path) else None
        return kept if kept is not None else prepare(modality, spec.read(value), cfg.input)

    return collate_inputs([spec.transform(raw(v), cfg.input) for v in values])


class ManifestDataset(Dataset):
    """Manifest samples decoded in ``modalities``; ``__getitems__`` returns one collated batch.

    Args:
        samples: the samples (all hold every modality in ``modalities``).
        modalities: what each batch holds.
        configs: modality configs (transforms).
        class_index: label name -> class index; batches hold ``"label"`` when given.
        rows: optional virtual index -> sample row (a weighted pool); default identity.
        decoded: files decoded at startup, by path (see :func:`load_inputs`).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        modalities: Sequence[str],
        configs: Mapping[str, ModalityConfig],
        class_index: Mapping[str, int] | None = None,
        rows: np.ndarray | None = None,
        decoded: Mapping[Path, Any] | None = None,
    ) -> None:
        self.samples, self.modalities = list(samples), list(modalities)
        self.configs, self.class_index, self.rows = dict(configs), class_index, rows
        self.decoded = decoded
        # Integer group ids (the manifest's group column, for multi-positive InfoNCE); the same on every rank.
        self.group_index = group_index(self.samples)

    def __len__(self) -> int:
        return len(self.samples) if self.rows is None else len(self.rows)

    def __getitems__(self, indices: Sequence[int], choices: Sequence[torch.Generator] | None = None) -> Batch:
        """One collated batch; ``choices``: a generator per row, drawing one of a sample's ``alternatives``
        (its captions) for this visit; without, a sample's first value."""
        size = len(self)
        bad = [i for i in indices if not 0 <= i < size]
        if bad:
            raise IndexError(f"sample index {bad[0]} out of range 0..{size - 1}")
        rows = [int(i) for i in indices] if self.rows is None else [int(self.rows[i]) for i in indices]
        picked = [self.samples[r] for r in rows]
        batch: Batch = {"id": torch.as_tensor(rows, dtype=torch.long), "sample_id": [s.id for s in picked]}
        if self.class_index is not None:
            batch["label"] = torch.as_tensor([self.class_index[s.label] for s in picked], dtype=torch.long)
        if self.group_index is not None:
            batch["group"] = torch.as_tensor([self.group_index[group_of(s)] for s in picked], dtype=torch.long)
            batch["source_key"] = [source_key(s) for s in picked]  # comparable across splits, unlike "group"
        for m in self.modalities:
            values = [s.values[m] for s in picked]
            if choices is not None:
                for i, s in enumerate(picked):
                    options = s.alternatives.get(m)
                    if options:
                        values[i] = options[int(torch.randint(len(options), (), generator=choices[i]))]
            batch[m] = load_inputs(m, values, self.configs[m], self.decoded)
        return batch

    def __getitem__(self, index: int) -> Batch:
        batch = self.__getitems__([index])
        return {k: ({kk: vv[0] for kk, vv in v.items()} if isinstance(v, dict) else v[0]) for k, v in batch.items()}


def group_of(sample: Sample) -> tuple[bool, str, str]:
    """A sample's group key: its ``group``, or a group of its own (keyed by its id) when it has none. A row
    number (the id of a row without one, or the group of such a row's captions) is qualified by its manifest
    (``Sample.origin``): rows of two manifests without ids (``data.sources``) never share a group."""
    return (sample.group is None, sample.origin or "", sample.id if sample.group is None else sample.group)


def stable_group_id(sample: Sample) -> int:
    """A 63-bit integer of the sample's :func:`~bindspace.data.manifest.qualified_key`, the same in every
    process without a shared table (streamed shards); distinct keys collide with probability ~2^-63."""
    digest = hashlib.blake2b(qualified_key(sample).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def group_index(samples: Sequence[Sample]) -> dict[tuple[bool, str, str], int] | None:
    """Group key -> integer id, in sorted order (so every rank agrees); None when no sample names a group.

    Manifests are ordered as they come in ``samples`` (``data.sources`` order), not by their paths: ranks on
    nodes that mount the data at different paths number the groups alike (ids are all-gathered by the loss).
    """
    if all(s.group is None for s in samples):
        return None
    rank = {origin: i for i, origin in enumerate(dict.fromkeys(s.origin or "" for s in samples))}
    keys = sorted({group_of(s) for s in samples}, key=lambda k: (k[0], rank[k[1]], k[2]))
    return {key: i for i, key in enumerate(keys)}


def weighted_rows(sizes: Sequence[int], weights: Sequence[float]) -> np.ndarray | None:
    """Virtual pool -> row of the concatenated sources, so a uniform draw picks source k w.p. w_k / sum(w).

    Each source gets ``max(n_k, round(T * p_k))`` slots with ``T = max_k n_k / p_k``: no sample is
    left out, and small heavily weighted sources repeat (slot ``j`` holds sample ``j mod n_k``).

    Returns:
        int64 array of rows, or None for a single source (the identity).

    Raises:
        ValueError: the weights would need more than ``MAX_POOL_RATIO`` slots per sample.
    """
    if len(sizes) == 1:
        return None
    n = np.asarray(sizes, dtype=np.int64)
    p = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    slots = np.maximum(n, np.rint(float(np.max(n / p)) * p).astype(np.int64))
    if slots.sum() > MAX_POOL_RATIO * n.sum():
        raise ValueError(f"weights {list(weights)} for sources of {list(sizes)} samples need {slots.sum()} slots")
    starts = np.concatenate([[0], np.cumsum(n)[:-1]])
    return np.concatenate([start + np.arange(k) % size for start, k, size in zip(starts, slots, n)])


def check_edge_data(edges: Sequence[Edge], manifests: Sequence[Manifest]) -> None:
    """Fail before any file is decoded when an edge of the graph has no training sample at all."""
    for e in edges:
        if not any(s.holds(e) for m in manifests for s in m.samples):
            raise ManifestError(
                f"edge {edge_key(e)}: no training sample holds both {e[0]} and {e[1]} (in "
                f"{', '.join(str(m.path) for m in manifests)}); drop the edge with graph.modalities or graph.edges"
            )


def check_manifests(
    manifests: Sequence[Manifest],
    modalities: Sequence[str],
    on_error: str,
    workers: int | None,
    keep: Callable[[str, Path, Any], None] | None = None,
) -> tuple[list[Manifest], dict[str, dict[str, int]]]:
    """Decode every file once; fail listing the bad ones (``raise``) or drop their samples (``skip``).

    ``keep(modality, path, decoded)`` sees every file that decodes (see :func:`scan_files`).

    Returns:
        The manifests to use, and per manifest path ``{"samples", "bad_files", "skipped_samples"}``.
    """
    if on_error not in ON_ERROR:
        raise ConfigError(f"data.on_error must be one of {list(ON_ERROR)}, got {on_error!r}")
    problems: dict[Path, list[FileProblem]] = {}
    for m in manifests:
        if m.path not in problems:
            problems[m.path] = scan_files(m, modalities, workers, keep)
    every = [p for found in problems.values() for p in found]
    if every and on_error == "raise":
        bad = ", ".join(str(path) for path, found in problems.items() if found)
        raise ManifestError(
            f"data.on_error=raise: {len(every)} bad file(s) in {bad}; fix them, or set data.on_error=skip "
            f"to drop their samples (`bindspace-data check MANIFEST` lists every one):\n{format_problems(every)}"
        )
    out, report = [], {}
    for m in manifests:
        kept, dropped = drop_samples(m, problems[m.path])
        report[str(m.path)] = {
            "samples": len(m.samples),
            "bad_files": len(problems[m.path]),
            "skipped_samples": dropped,
        }
        if dropped:
            warnings.warn(f"data.on_error=skip: dropped {dropped} sample(s) of {m.path} with bad files", stacklevel=2)
        out.append(kept)
    return out, report


def heldout_modalities(samples: Sequence[Sample], graph: Sequence[str], split: str) -> list[str]:
    """The graph's modalities that every held-out sample holds (the ones evaluated); warn about the rest."""
    counts = Counter(m for s in samples for m in s.values)
    keep = [m for m in graph if counts[m] == len(samples)]
    held = ", ".join(f"{m} {counts[m]}" for m in graph)
    if len(keep) < 2:
        raise ManifestError(
            f"data.{split}: retrieval needs two modalities that every {split} sample holds, but only {keep} are "
            f"held by all {len(samples)} samples (per modality: {held})"
        )
    if len(keep) < len(graph):
        warnings.warn(
            f"data.{split}: evaluating {keep} only; not held by every one of the {len(samples)} samples: "
            + ", ".join(f"{m} ({counts[m]})" for m in graph if m not in keep),
            stacklevel=2,
        )
    return keep


def heldout_dataset(
    samples: Sequence[Sample],
    configs: Mapping[str, ModalityConfig],
    class_index: Mapping[str, int] | None,
    split: str,
    decoded: Mapping[Path, Any] | None = None,
) -> ManifestDataset:
    """Held-out batches: the modalities every sample holds, ``label`` when every sample has one."""
    if not samples:
        raise ManifestError(f"data.{split}: no samples left to evaluate on")
    modalities = heldout_modalities(samples, list(configs), split)
    labelled = sum(s.label is not None for s in samples)
    if 0 < labelled < len(samples):
        warnings.warn(
            f"data.{split}: only {labelled} of {len(samples)} samples have a label; no class metrics", stacklevel=2
        )
    index = class_index if labelled == len(samples) else None
    small = small_heldout_message(len(samples), f"data.{split}")
    if small:  # e.g. the automatic 10% of a 60-row manifest: R@10 over 8 samples is 100 for any model
        warnings.warn(small, stacklevel=2)
    return ManifestDataset(samples, modalities, configs, index, decoded=decoded)


def class_vocabulary(samples: Sequence[Sample]) -> list[str]:
    """Sorted label names (the class index of a label is its position)."""
    return sorted({s.label for s in samples if s.label is not None})


class ManifestDataModule(PairedDataModule):
    """Per-edge, step-indexed training batches from manifests; held-out batches from a val/test manifest.

    Args:
        configs: modality configs of the model (which modalities are read, and their transforms).
        edges: the trainable edges; each draws from the samples holding both of its modalities.
        batch_size: per device and per edge.
        seed: data order seed.
        train: the training manifest (or give ``sources``).
        sources: ``[{path, weight}, ...]``: several training manifests mixed by sampling weight.
        val: held-out manifest; default: the ``val_fraction`` of training samples chosen by id hash.
        test: the final gallery's manifest; default: the validation set (``bindspace-eval`` then fits its
            mitigations on one half of it and scores the other, split by sample id).
        val_fraction: share of training samples held out when ``val`` is not given.
        select_fraction: with ``val`` and no ``test``: the share of ``val``'s samples (by id, or group,
            hash) that validation uses (logged val/ metrics, early stopping, the best checkpoint); final
            metrics score the rest. Nothing a run was selected on is then scored. None: validation and
            test are the same samples (fine when nothing is selected on them).
        captions: a JSON Lines row whose text is a list: ``all`` (one training sample per caption, one
            group) or ``sample`` (one sample; each training visit draws one caption, per (seed, step,
            edge, row), so each sound weighs the same whatever its number of captions). Held-out sets
            score every caption either way.
        on_error: ``raise`` (bad files fail the run before training) or ``skip`` (drop their samples).
        num_workers, pin_memory: DataLoader settings (persistent workers when ``num_workers > 0``).
        scan_workers: threads decoding every file once at startup (default ``min(32, cpus + 4)``).
        audio_cache_gb: audio decoded at startup is kept, mono at the model's sample rate (float32), up
            to this many GB; steps read only what did not fit (0: decode every use).
    """

    @classmethod
    def provided_modalities(cls, train: str | None = None, sources: Sequence[Any] | None = None, **_: Any) -> list[str]:
        """The modality columns of the training manifest(s), in registry order (only their text is read)."""
        return provided.manifest(train=train, sources=sources)

    def __init__(
        self,
        configs: Mapping[str, ModalityConfig],
        edges: Sequence[Edge],
        batch_size: int = 64,
        seed: int = 0,
        train: str | None = None,
        sources: Sequence[Any] | None = None,
        val: str | None = None,
        test: str | None = None,
        val_fraction: float = 0.1,
        select_fraction: float | None = None,
        captions: str = "all",
        on_error: str = "raise",
        num_workers: int = 0,
        pin_memory: bool = False,
        scan_workers: int | None = None,
        audio_cache_gb: float = 2.0,
    ) -> None:
        super().__init__(configs, edges, batch_size, seed, num_workers, pin_memory)
        check_workers(scan_workers, "data.scan_workers")
        weighted = parse_sources(train, sources)
        heldout = [
            load_manifest(existing_path(p, f"data.{k}")) for k, p in (("val", val), ("test", test)) if p is not None
        ]
        if captions not in CAPTION_MODES:
            raise ConfigError(f"data.captions must be one of {list(CAPTION_MODES)}, got {captions!r}")
        # "sample": a caption list stays one training sample, one caption drawn per visit (StepBatches' choices).
        self.sample_choices = captions == "sample"
        training = [load_manifest(p, captions=captions) for p, _ in weighted]
        check_edge_data(self.edges, training)  # a config error: before minutes of decoding files
        if isinstance(audio_cache_gb, bool) or not isinstance(audio_cache_gb, int | float) or audio_cache_gb < 0:
            raise ConfigError(f"data.audio_cache_gb must be a number >= 0, got {audio_cache_gb!r}")
        self.decoded: DecodedAudio | None = None
        if "audio" in self.configs:  # decoded once below, resampled once, kept for every step
            self.decoded = DecodedAudio(self.configs["audio"].input.sample_rate, audio_cache_gb * 1e9)
        keep = self.decoded.keep if self.decoded is not None else None
        manifests, files = check_manifests(training + heldout, list(self.configs), on_error, scan_workers, keep)
        if self.decoded is not None:
            log.info("data: %s", self.decoded.summary())
        parts = manifests[: len(weighted)]
        val_samples = manifests[len(weighted)].samples if val is not None else self._split(parts, val_fraction)
        val_samples = expand_alternatives(val_samples)  # held out, every caption is scored (one group each)
        test_samples = manifests[-1].samples if test is not None else val_samples
        if select_fraction is not None:
            val_samples, test_samples = self._select(val_samples, select_fraction, val, test)
        self.class_names = class_vocabulary([s for m in parts for s in m.samples] + val_samples + test_samples)
        index = {name: i for i, name in enumerate(self.class_names)} or None
        self.pools = {edge_key(e): self._edge_pool(e, parts, [w for _, w in weighted], index) for e in self.edges}
        self.val_set = heldout_dataset(val_samples, self.configs, index, "val", self.decoded)
        self.test_set = (
            self.val_set
            if test_samples is val_samples
            else heldout_dataset(test_samples, self.configs, index, "test", self.decoded)
        )
        self.skipped = sum(r["skipped_samples"] for r in files.values())
        self._report = self._build_report(files, parts)
        if self.skipped:
            log.warning("data: skipped %d sample(s) with bad files: %s", self.skipped, files)

    @staticmethod
    def _split(parts: list[Manifest], fraction: float) -> list[Sample]:
        if not 0 < fraction < 1:
            raise ConfigError(f"data.val_fraction must be in (0, 1) when data.val is not given, got {fraction!r}")
        val = []
        for i, m in enumerate(parts):
            kept, held = split_by_id(m.samples, fraction)
            parts[i], val = m.with_samples(kept), val + held
        return val

    @staticmethod
    def _select(
        samples: list[Sample], fraction: float, val: str | None, test: str | None
    ) -> tuple[list[Sample], list[Sample]]:
        """(validation, test): ``fraction`` of the held-out samples to select on, the rest to score."""
        if val is None or test is not None:
            raise ConfigError(
                "data.select_fraction splits data.val into validation and test; it needs data.val and no "
                f"data.test (got val={val!r}, test={test!r})"
            )
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
            raise ConfigError(f"data.select_fraction must be in (0, 1) or null, got {fraction!r}")
        scored, selection = split_by_id(samples, fraction)
        if not selection or not scored:
            raise ConfigError(
                f"data.select_fraction={fraction} leaves {len(selection)} validation and {len(scored)} test "
                f"samples of data.val's {len(samples)}"
            )
        return selection, scored

    def _edge_pool(
        self, edge: Edge, parts: list[Manifest], weights: list[float], index: Mapping[str, int] | None
    ) -> ManifestDataset:
        eligible = [([s for s in m.samples if s.holds(edge)], w) for m, w in zip(parts, weights)]
        eligible = [(rows, w) for rows, w in eligible if rows]
        key = edge_key(edge)
        if not eligible:
            raise ManifestError(f"edge {key}: no training sample holds both {edge[0]} and {edge[1]}")
        samples = [s for rows, _ in eligible for s in rows]
        try:
            rows = weighted_rows([len(r) for r, _ in eligible], [w for _, w in eligible])
        except ValueError as err:
            raise ConfigError(f"data.sources, edge {key}: {err}; make the weight ratios less extreme") from None
        labelled = all(s.label is not None for s in samples)
        pool = ManifestDataset(samples, edge, self.configs, index if labelled else None, rows, self.decoded)
        if pool.group_index is not None and len(pool.group_index) == len(samples):
            warnings.warn(
                f"data: edge {key}: every group of the manifest's group column has one member; "
                "multi-positive InfoNCE is then plain InfoNCE",
                stacklevel=2,
            )
        if len(pool) < self.batch_size:
            raise ManifestError(
                f"edge {key}: {len(pool)} training samples, fewer than data.batch_size={self.batch_size}"
            )
        return pool

    def _build_report(self, files: dict[str, dict[str, int]], parts: list[Manifest]) -> dict[str, Any]:
        return {
            "manifests": files,
            "skipped": self.skipped,
            "train_samples": sum(len(m.samples) for m in parts),
            "val_samples": len(self.val_set),
            "test_samples": len(self.test_set),
            "edges": {k: {"samples": len(p.samples), "pool": len(p)} for k, p in self.pools.items()},
            "eval_modalities": {"val": self.val_set.modalities, "test": self.test_set.modalities},
            "classes": len(self.class_names),
        }

    @property
    def data_report(self) -> dict[str, Any]:
        return self._report

    def edge_sources(self) -> dict[str, ManifestDataset]:
        return self.pools

    def heldout_set(self, split: str) -> ManifestDataset:
        return self.val_set if check_split(split) == "val" else self.test_set
