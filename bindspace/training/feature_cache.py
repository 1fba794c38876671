"""Frozen-encoder feature cache: a frozen anchor's forward pass is run once per sample, then read back.

ImageBind keeps CLIP's image and text encoders frozen; every step then recomputes the same anchor
features for samples it has seen before. With ``cache.frozen_features=true`` the pooled trunk token of
each frozen, cacheable encoder (``head.pool`` cls or eos) is stored per sample and reused; the head
(trainable or not) still runs on it, so training is unchanged: the same losses and gradients, minus
the frozen forward.

Keys: ``(encoder hash, edge, sample id)``. The encoder hash covers the modality config and every
tokenizer and trunk weight, so an encoder that is unfrozen, trained and frozen again gets a fresh
table. Sample ids are those of the edge's training source (``batch["id"]``), so a cache folder
belongs to one dataset: it lives in the run folder by default (and survives preemption with it).

Exact only when a sample's input is the same every time it is drawn: bindspace's data pipelines
apply no random augmentation; an augmented modality must not be cached.

On disk: ``<dir>/<encoder hash>/<edge>.rank<r>.pt`` holding ``{"ids": (N,), "features": (N, ...)}``,
written atomically at every checkpoint and at the end of training, merged over ranks on load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bindspace.models.model import BindSpaceModel
from bindspace.utils.io import atomic_write, remove_stale_temporaries

log = logging.getLogger(__name__)


def encoder_hash(model: BindSpaceModel, modality: str) -> str:
    """sha256 over the modality's config and its tokenizer and trunk weights (16 hex digits)."""
    h = hashlib.sha256()
    cfg = dataclasses.asdict(model.configs[modality])
    h.update(json.dumps({"input": cfg["input"], "trunk": cfg["trunk"], "pool": cfg["head"]["pool"]},
                        sort_keys=True, default=str).encode())  # fmt: skip
    for stage in ("preprocessors", "trunks"):
        for name, t in getattr(model, stage)[modality].state_dict().items():
            h.update(f"{stage}.{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def take(x: Any, idx: Tensor) -> Any:
    """Rows ``idx`` of a model input (tensor, dict of tensors, or list)."""
    if isinstance(x, Tensor):
        return x[idx.to(x.device)]
    if isinstance(x, Mapping):
        return {k: take(v, idx) for k, v in x.items()}
    if isinstance(x, list):
        return [x[i] for i in idx.tolist()]
    raise TypeError(f"cannot index a model input of type {type(x).__name__}")


class FeatureTable:
    """Sample id -> feature row, growing as new samples arrive."""

    def __init__(self) -> None:
        self.rows: dict[int, int] = {}
        self.data: Tensor | None = None
        self.dirty = False

    def __len__(self) -> int:
        return len(self.rows)

    def lookup(self, ids: list[int]) -> list[int]:
        return [self.rows.get(i, -1) for i in ids]

    def add(self, ids: list[int], features: Tensor) -> None:
        features = features.detach()
        if self.data is None:
            self.data = features.new_empty((max(1024, 2 * len(ids)), *features.shape[1:]))
        need = len(self.rows) + len(ids)
        if need > self.data.shape[0]:
            grown = self.data.new_empty((max(need, 2 * self.data.shape[0]), *self.data.shape[1:]))
            grown[: len(self.rows)] = self.data[: len(self.rows)]
            self.data = grown
        start = len(self.rows)
        self.data[start : start + len(ids)] = features.to(self.data.device, self.data.dtype)
        for k, i in enumerate(ids):
            self.rows[i] = start + k
        self.dirty = True

    def state(self) -> dict[str, Tensor]:
        n = len(self.rows)
        ids = torch.tensor(sorted(self.rows, key=self.rows.get), dtype=torch.long)
        return {"ids": ids, "features": self.data[:n].cpu().clone()}


class FrozenFeatureCache:
    """Per (frozen encoder, edge) tables of pooled trunk features, with hit/miss counters.

    Args:
        root: folder for the on-disk tables (None: memory only).
        rank: this process's rank (each rank writes its own files; loading merges them).
        uncached: modalities never served, frozen or not: their input differs at every visit of a sample
            (augmentation, a caption drawn per visit), so one feature per sample id would be wrong.
    """

    def __init__(self, root: str | Path | None = None, rank: int = 0, uncached: Iterable[str] = ()) -> None:
        self.root = Path(root) if root is not None else None
        self.rank = rank
        self.uncached = frozenset(uncached)
        self.tables: dict[tuple[str, str], FeatureTable] = {}
        self._hashes: dict[str, str] = {}
        self.hits = 0
        self.misses = 0

    def active(self, model: BindSpaceModel) -> list[str]:
        """Modalities served from the cache now: frozen tokenizer and trunk, cls/eos head."""
        frozen = [m for m in model.frozen_modalities() if model.heads[m].cacheable and m not in self.uncached]
        frozen = [m for m in frozen if not any(p.requires_grad for p in model.preprocessors[m].parameters())]
        for m in list(self._hashes):
            if m not in frozen:
                del self._hashes[m]  # unfrozen: its next frozen period has new weights and a new hash
        return frozen

    def key(self, model: BindSpaceModel, modality: str) -> str:
        if modality not in self._hashes:
            self._hashes[modality] = encoder_hash(model, modality)
            log.info("feature cache: %s encoder %s", modality, self._hashes[modality])
        return self._hashes[modality]

    def table(self, model: BindSpaceModel, modality: str, edge: str) -> FeatureTable:
        k = (self.key(model, modality), edge)
        if k not in self.tables:
            self.tables[k] = self._load(*k)
        return self.tables[k]

    @torch.no_grad()
    def features(self, model: BindSpaceModel, modality: str, edge: str, ids: Tensor, inputs: Any) -> Tensor:
        """Features of the samples ``ids`` (computing and storing those not seen before)."""
        table = self.table(model, modality, edge)
        id_list = [int(i) for i in ids.tolist()]
        rows = torch.tensor(table.lookup(id_list), dtype=torch.long)
        missing = (rows < 0).nonzero().flatten()
        self.misses += len(missing)
        self.hits += len(id_list) - len(missing)
        if len(missing):
            new_ids = [id_list[i] for i in missing.tolist()]
            fresh = {}
            for k, i in enumerate(new_ids):  # a batch may hold the same sample twice
                fresh.setdefault(i, k)
            keep = torch.tensor(list(fresh.values()), dtype=torch.long)
            computed = model.encode_features(modality, take(inputs, missing[keep]))
            table.add(list(fresh), computed)
            rows = torch.tensor(table.lookup(id_list), dtype=torch.long)
        return table.data[rows.to(table.data.device)]

    # ---- disk -----------------------------------------------------------------------------------
    def _file(self, key: str, edge: str, rank: int | str) -> Path:
        assert self.root is not None
        return self.root / key / f"{edge.replace('|', '-')}.rank{rank}.pt"

    def _load(self, key: str, edge: str) -> FeatureTable:
        table = FeatureTable()
        if self.root is None:
            return table
        # A cache.dir outside the run folder is not swept at the run's start: this rank's own temporaries
        # from a killed write are removed here (never one a live process still holds locked).
        for stale in remove_stale_temporaries(self._file(key, edge, self.rank)):
            log.warning("feature cache: removed %s, a temporary file an interrupted run left behind", stale)
        for path in sorted(self._file(key, edge, "*").parent.glob(self._file(key, edge, "*").name)):
            state = torch.load(path, map_location="cpu", weights_only=True)
            ids = [int(i) for i in state["ids"].tolist()]
            new = [k for k, i in enumerate(ids) if i not in table.rows]
            if new:
                table.add([ids[k] for k in new], state["features"][new])
        table.dirty = False
        if len(table):
            log.info("feature cache: %d %s features loaded for %s", len(table), edge, key)
        return table

    def flush(self) -> None:
        """Write every table that changed since the last flush (atomically, one file per rank)."""
        if self.root is None:
            return
        for (key, edge), table in self.tables.items():
            if table.dirty and len(table):
                state = table.state()
                atomic_write(self._file(key, edge, self.rank), lambda f, s=state: torch.save(s, f))
                table.dirty = False

    def stats(self) -> dict[str, float]:
        total = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses, "hit_rate": self.hits / total if total else 0.0}
