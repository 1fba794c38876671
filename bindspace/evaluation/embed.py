"""Embed a held-out loader once, every modality, for evaluation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from bindspace.models.model import BindSpaceModel


def to_device(x, device: torch.device):
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return x.to(device, non_blocking=True) if isinstance(x, Tensor) else x


@torch.no_grad()
def embed_batches(
    model: BindSpaceModel, batches: Iterable[dict], modalities: Sequence[str]
) -> tuple[dict[str, Tensor], Tensor, Tensor | None]:
    """Returns (modality -> (N, D) embeddings on CPU, ids (N,), labels (N,) or None)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, list[Tensor]] = {m: [] for m in modalities}
    ids, labels = [], []
    try:
        for batch in batches:
            for m in modalities:
                out[m].append(model.encode(m, to_device(batch[m], device)).float().cpu())
            ids.append(batch["id"])
            if "label" in batch:
                labels.append(batch["label"])
    finally:
        model.train(was_training)
    return {m: torch.cat(v) for m, v in out.items()}, torch.cat(ids), (torch.cat(labels) if labels else None)
