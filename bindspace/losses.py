"""Contrastive losses: symmetric InfoNCE per edge, summed over the edges of the alignment graph.

Distributed negatives follow open_clip's semantics (``gather_features``, ``local_loss``,
``gather_with_grad``, labels offset by rank), with how gradients cross the gather said in one word
(torchmultimodal's style): ``backprop="global"`` (all-gather with gradients), ``"local"`` (gradients
flow only through this rank's slice) or ``"none"`` (no gathering: in-batch negatives only).

Memory of the logits per rank, with ``N`` ranks of batch ``B``: the full loss builds two
``(NB, NB)`` matrices; ``local_loss=True`` builds ``(B, NB)``, and with ``backprop="global"`` gives
the same gradients as the full loss once DDP averages them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from bindspace.graph import Edge, edge_key
from bindspace.modalities import LogitScaleConfig

__all__ = ["BACKPROP_MODES", "Edge", "MultiEdgeLoss", "edge_key", "infonce"]

BACKPROP_MODES = ("global", "local", "none")


def infonce(anchor: Tensor, other: Tensor, logit_scale: Tensor | float, labels: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE (CLIP): mean of anchor->other and other->anchor cross-entropy.

    Args:
        anchor: ``(B, D)`` unit-norm embeddings; row ``i`` pairs with row ``labels[i]`` of ``other``.
        other: ``(M, D)`` unit-norm embeddings (``M >= B`` when negatives come from other ranks).
        logit_scale: inverse temperature multiplying the cosine similarities.
        labels: ``(B,)`` index of each anchor's positive in ``other``; default ``arange(B)`` (needs M == B).

    Returns:
        Scalar loss.
    """
    if anchor.ndim != 2 or other.ndim != 2 or anchor.shape[1] != other.shape[1]:
        raise ValueError(
            f"infonce expects (B, D) and (M, D) embeddings, got {tuple(anchor.shape)} and {tuple(other.shape)}"
        )
    if labels is None:
        if anchor.shape[0] != other.shape[0]:
            raise ValueError(f"without labels the batches must match, got {anchor.shape[0]} and {other.shape[0]}")
        labels = torch.arange(anchor.shape[0], device=anchor.device)
    logits = logit_scale * anchor @ other.T  # (B, M)
    return (
        F.cross_entropy(logits, labels)
        + F.cross_entropy(logits.T[labels], torch.arange(len(labels), device=anchor.device))
    ) / 2


def gather_features(x: Tensor, backprop: str = "global") -> Tensor:
    """All-gather ``(B, D)`` features from every rank into ``(world * B, D)``, rank-major.

    ``global``: gradients flow back to the rank that produced each slice.
    ``local``: the gather carries no gradient; this rank's own slice is put back so its gradient flows.
    """
    if backprop not in BACKPROP_MODES:
        raise ValueError(f"backprop must be one of {BACKPROP_MODES}, got {backprop!r}")
    if backprop == "none" or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    if backprop == "global":
        import torch.distributed.nn as dist_nn

        return torch.cat(dist_nn.all_gather(x), dim=0)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach())
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)


class LogitScale(nn.Module):
    """One edge's inverse temperature, stored as a log (learnable or fixed) and clamped at ``max``."""

    def __init__(self, cfg: LogitScaleConfig) -> None:
        super().__init__()
        value = torch.tensor(math.log(cfg.init))
        if cfg.learnable:
            self.log_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_scale", value)
        self.max_log = math.log(cfg.max)

    def forward(self) -> Tensor:
        return self.log_scale.clamp(max=self.max_log).exp()


class MultiEdgeLoss(nn.Module):
    """Weighted sum of per-edge InfoNCE over the active edges.

    Args:
        edges: all edges the model may train, ``(anchor, other)``.
        scales: per edge key, the temperature preset (ImageBind's value of the edge's other side).
        weights: per edge key, a loss weight (default 1).
        local_loss: compute only this rank's rows of the logits (open_clip's ``local_loss``).
        backprop: how gradients cross the all-gather: ``global``, ``local`` or ``none``.
    """

    def __init__(
        self,
        edges: Sequence[Edge],
        scales: Mapping[str, LogitScaleConfig],
        weights: Mapping[str, float] | None = None,
        local_loss: bool = False,
        backprop: str = "global",
    ) -> None:
        super().__init__()
        if backprop not in BACKPROP_MODES:
            raise ValueError(f"loss.backprop must be one of {BACKPROP_MODES}, got {backprop!r}")
        self.edges = [tuple(e) for e in edges]
        keys = [edge_key(e) for e in self.edges]
        self.logit_scales = nn.ModuleDict({k: LogitScale(scales[k]) for k in keys})
        self.weights = {k: float((weights or {}).get(k, 1.0)) for k in keys}
        self.local_loss, self.backprop = local_loss, backprop

    def set_frozen_edges(self, keys: set[str]) -> list[nn.Parameter]:
        """Freeze the learnable temperatures of ``keys`` (and unfreeze the others); returns those newly frozen.

        A curriculum freezes the temperature of an edge whose two encoders are both wholly frozen: it is
        the only thing of that edge left to train, and training it alone would not align anything.
        """
        newly = []
        for key, scale in self.logit_scales.items():
            p = scale.log_scale
            if not isinstance(p, nn.Parameter):
                continue  # a fixed temperature (a buffer) never trains
            if key in keys and p.requires_grad:
                newly.append(p)
            p.requires_grad_(key not in keys)
        return newly

    def edge_loss(
        self, key: str, anchor: Tensor, other: Tensor, all_anchor: Tensor | None = None, all_other: Tensor | None = None
    ) -> Tensor:
        """One edge's symmetric InfoNCE; ``all_*``: the features of every rank (gathered here when not given)."""
        scale = self.logit_scales[key]()
        if all_anchor is None or all_other is None:
            all_anchor, all_other = gather_features(anchor, self.backprop), gather_features(other, self.backprop)
        if all_anchor.shape[0] == anchor.shape[0]:  # single process or no gathering
            return infonce(anchor, other, scale)
        rank = dist.get_rank()
        if self.local_loss:
            # Rows of this rank only: anchor_i vs all others, and other_i vs all anchors.
            labels = torch.arange(anchor.shape[0], device=anchor.device) + rank * anchor.shape[0]
            a2o = F.cross_entropy(scale * anchor @ all_other.T, labels)
            o2a = F.cross_entropy(scale * other @ all_anchor.T, labels)
            return (a2o + o2a) / 2
        return infonce(all_anchor, all_other, scale)

    def gather_by_modality(self, pairs: Mapping[str, tuple[Tensor, Tensor]]) -> dict[str, tuple[Tensor, Tensor]]:
        """Every rank's features of every edge, with one all-gather per modality per step (not two per edge).

        The features a modality has in all its edges are concatenated, gathered once (rank-major), and each
        edge takes its columns back: in the image-anchored star graph that is 6 collectives instead of 10.
        Ranks gather the same modalities in the same (sorted) order, as collectives require.
        """
        if self.backprop == "none" or not (dist.is_available() and dist.is_initialized()):
            return dict(pairs)
        world = dist.get_world_size()
        if world == 1:
            return dict(pairs)
        sides: dict[str, list[tuple[str, int, Tensor]]] = {}
        for key in sorted(pairs):
            for side, (m, x) in enumerate(zip(key.split("|"), pairs[key])):
                sides.setdefault(m, []).append((key, side, x))
        gathered: dict[str, list[Tensor]] = {k: [pairs[k][0], pairs[k][1]] for k in pairs}
        for m in sorted(sides):
            parts = sides[m]
            local = torch.cat([x for _, _, x in parts]) if len(parts) > 1 else parts[0][2]
            full = gather_features(local, self.backprop).view(world, local.shape[0], -1)
            start = 0
            for key, side, x in parts:
                gathered[key][side] = full[:, start : start + x.shape[0]].reshape(world * x.shape[0], -1)
                start += x.shape[0]
        return {k: (a, o) for k, (a, o) in gathered.items()}

    def forward(
        self, pairs: Mapping[str, tuple[Tensor, Tensor]], stage_weights: Mapping[str, float] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total and per-edge losses.

        Args:
            pairs: edge key -> (anchor-side embeddings, other-side embeddings).
            stage_weights: optional per-edge multipliers (a curriculum's replay weights); missing = 1.
        """
        if not pairs:
            raise ValueError("MultiEdgeLoss got no active edge")
        stage_weights = stage_weights or {}
        everyone = self.gather_by_modality(pairs)
        losses = {k: self.edge_loss(k, a, o, *everyone[k]) for k, (a, o) in pairs.items()}
        total = sum(self.weights[k] * stage_weights.get(k, 1.0) * v for k, v in losses.items())
        return total, losses
