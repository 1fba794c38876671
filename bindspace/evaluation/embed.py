"""Embed a held-out loader once, every modality, for evaluation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

if TYPE_CHECKING:  # the model imports timm; the command lines import this module before their checks
    from bindspace.models.model import BindSpaceModel


def to_device(x, device: torch.device):
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return x.to(device, non_blocking=True) if isinstance(x, Tensor) else x


class HeldOut(NamedTuple):
    """An embedded held-out split; row i of every array is one sample.

    ``ids`` are unique (``per_query.npz`` matches queries across runs by them). ``groups``, from a
    manifest's ``group`` column, says which rows are one source (several captions of one sound): at
    instance level they are each other's matches. ``None`` when the data names no groups.
    """

    embeddings: dict[str, Tensor]
    ids: Tensor
    labels: Tensor | None
    groups: Tensor | None = None


def relevance_keys(split: HeldOut) -> Tensor:
    """Per row, what instance-level retrieval matches on: its group when the data names groups, else its id."""
    return split.ids if split.groups is None else split.groups


@torch.no_grad()
def embed_batches(model: BindSpaceModel, batches: Iterable[dict], modalities: Sequence[str]) -> HeldOut:
    """Every modality of every batch, embedded in eval mode; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, list[Tensor]] = {m: [] for m in modalities}
    ids, labels, groups = [], [], []
    try:
        for batch in batches:
            for m in modalities:
                out[m].append(model.encode(m, to_device(batch[m], device)).float().cpu())
            ids.append(batch["id"])
            if "label" in batch:
                labels.append(batch["label"])
            if "group" in batch:
                groups.append(batch["group"])
    finally:
        model.train(was_training)
    return HeldOut(
        {m: torch.cat(v) for m, v in out.items()},
        torch.cat(ids),
        torch.cat(labels) if labels else None,
        torch.cat(groups) if groups else None,
    )
