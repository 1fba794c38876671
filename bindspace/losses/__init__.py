"""Contrastive losses over the edges of the alignment graph: one objective per edge, summed.

Each edge trains with its own objective (:class:`EdgeLoss`): symmetric InfoNCE (CLIP; several
positives per row when pairs carry group ids), SigLIP's sigmoid loss, or decoupled contrastive
learning (DCL/DCLW). Temperatures (and SigLIP's bias) live here, one per edge.

Distributed negatives follow open_clip's semantics (``gather_features``, ``local_loss``,
``gather_with_grad``, labels offset by rank), with how gradients cross the gather said in one word
(torchmultimodal's style): ``backprop="global"`` (all-gather with gradients), ``"local"`` (gradients
flow only through this rank's slice) or ``"none"`` (no gathering: in-batch negatives only). Every
rank gathers each modality's features once per step, whatever the number of edges that use them.
SigLIP edges need no gather: their negatives travel between ranks chunk by chunk (:mod:`.siglip`).

Memory of the logits per rank, with ``N`` ranks of batch ``B``: the full softmax losses build two
``(NB, NB)`` matrices; ``local_loss=True`` builds ``(B, NB)``; SigLIP one ``(B, B)`` block at a time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from bindspace.graph import Edge, edge_key
from bindspace.losses.cyclip import cyclip_terms
from bindspace.losses.dcl import DCL_WEIGHTINGS, dcl
from bindspace.losses.distributed import BACKPROP_MODES, distributed_world, gather_features, gather_ids
from bindspace.losses.infonce import (
    infonce,
    masked_infonce,
    masked_multi_positive_nce,
    masked_nce,
    multi_positive_infonce,
    multi_positive_nce,
)
from bindspace.losses.siglip import SIGLIP_DIST, siglip, siglip_distributed
from bindspace.modalities import LogitScaleConfig

__all__ = [
    "BACKPROP_MODES",
    "DCL_WEIGHTINGS",
    "LOSS_KINDS",
    "SIGLIP_DIST",
    "SIGLIP_LOGIT_SCALE",
    "Edge",
    "EdgeLoss",
    "LogitBias",
    "LogitBiasConfig",
    "LogitScale",
    "MultiEdgeLoss",
    "cyclip_terms",
    "dcl",
    "edge_key",
    "gather_features",
    "infonce",
    "masked_infonce",
    "multi_positive_infonce",
    "siglip",
    "siglip_distributed",
]

LOSS_KINDS = ("infonce", "siglip", "dcl")
# SigLIP's initial temperature, t = exp(t') with t' = log 10 (the paper's init), learnable; clamped as CLIP's.
SIGLIP_LOGIT_SCALE = LogitScaleConfig(init=10.0, learnable=True, max=100.0)


@dataclass(frozen=True)
class LogitBiasConfig:
    """SigLIP's bias ``b`` of the logits; ``-10`` as in the paper, so that the many negatives start near 0 loss."""

    init: float = -10.0
    learnable: bool = True


@dataclass(frozen=True)
class EdgeLoss:
    """One edge's objective; only the fields of its ``kind`` are read.

    Attributes:
        kind: ``infonce``, ``siglip`` or ``dcl``.
        logit_scale: (siglip) its initial temperature; ``None``: :data:`SIGLIP_LOGIT_SCALE` (the
            softmax losses start from the preset of the edge's other modality).
        bias: (siglip) the bias of the logits.
        dist: (siglip) how negatives cross ranks: ``bidir``, ``shift``, ``reduce`` or ``gather``.
        weighting: (dcl) ``none`` for DCL, ``vmf`` for DCLW.
        sigma: (dcl) DCLW's scale of the positive similarities.
        in_modal: (dcl) also contrast against the same modality's other samples.
        cyclip_in_modal, cyclip_cross_modal: (any kind) weights of CyCLIP's consistency terms (0: off;
            the paper uses 0.25 each).
    """

    kind: str = "infonce"
    logit_scale: LogitScaleConfig | None = None
    bias: LogitBiasConfig = field(default_factory=LogitBiasConfig)
    dist: str = "bidir"
    weighting: str = "none"
    sigma: float = 0.5
    in_modal: bool = False
    cyclip_in_modal: float = 0.0
    cyclip_cross_modal: float = 0.0

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("kind", self.kind, LOSS_KINDS),
            ("dist", self.dist, SIGLIP_DIST),
            ("weighting", self.weighting, DCL_WEIGHTINGS),
        ):
            if value not in allowed:
                raise ValueError(f"EdgeLoss.{name} must be one of {allowed}, got {value!r}")
        if not self.sigma > 0:
            raise ValueError(f"EdgeLoss.sigma must be > 0, got {self.sigma!r}")
        if not (self.cyclip_in_modal >= 0 and self.cyclip_cross_modal >= 0):
            raise ValueError(
                f"EdgeLoss: CyCLIP weights must be >= 0, got {self.cyclip_in_modal}, {self.cyclip_cross_modal}"
            )

    @property
    def cyclip(self) -> bool:
        return self.cyclip_in_modal > 0 or self.cyclip_cross_modal > 0

    @property
    def gathers(self) -> bool:
        """Whether the edge needs every rank's features all-gathered (SigLIP's ring variants do not, unless CyCLIP)."""
        return self.kind != "siglip" or self.dist == "gather" or self.cyclip


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


class LogitBias(nn.Module):
    """One SigLIP edge's logit bias (learnable or fixed)."""

    def __init__(self, cfg: LogitBiasConfig) -> None:
        super().__init__()
        value = torch.tensor(float(cfg.init))
        if cfg.learnable:
            self.bias = nn.Parameter(value)
        else:
            self.register_buffer("bias", value)

    def forward(self) -> Tensor:
        return self.bias


class MultiEdgeLoss(nn.Module):
    """Weighted sum of per-edge contrastive losses over the active edges.

    Args:
        edges: all edges the model may train, ``(anchor, other)``.
        scales: per edge key, the temperature preset (ImageBind's value of the edge's other side, or
            :data:`SIGLIP_LOGIT_SCALE` for SigLIP edges).
        weights: per edge key, a loss weight (default 1).
        local_loss: compute only this rank's rows of the logits (open_clip's ``local_loss``).
        backprop: how gradients cross the all-gather: ``global``, ``local`` or ``none``.
        objectives: per edge key, its :class:`EdgeLoss` (default InfoNCE).
    """

    def __init__(
        self,
        edges: Sequence[Edge],
        scales: Mapping[str, LogitScaleConfig],
        weights: Mapping[str, float] | None = None,
        local_loss: bool = False,
        backprop: str = "global",
        objectives: Mapping[str, EdgeLoss] | None = None,
    ) -> None:
        super().__init__()
        if backprop not in BACKPROP_MODES:
            raise ValueError(f"loss.backprop must be one of {BACKPROP_MODES}, got {backprop!r}")
        self.edges = [tuple(e) for e in edges]
        keys = [edge_key(e) for e in self.edges]
        self.objectives = {k: (objectives or {}).get(k, EdgeLoss()) for k in keys}
        self.logit_scales = nn.ModuleDict({k: LogitScale(scales[k]) for k in keys})
        self.logit_biases = nn.ModuleDict(
            {k: LogitBias(self.objectives[k].bias) for k in keys if self.objectives[k].kind == "siglip"}
        )
        self.weights = {k: float((weights or {}).get(k, 1.0)) for k in keys}
        self.local_loss, self.backprop = local_loss, backprop

    def set_frozen_edges(self, keys: set[str]) -> list[nn.Parameter]:
        """Freeze the learnable temperatures (and biases) of ``keys``, unfreeze the others; returns those newly frozen.

        A curriculum freezes the temperature of an edge whose two encoders are both wholly frozen: it is
        the only thing of that edge left to train, and training it alone would not align anything.
        """
        newly = []
        for key, module in [*self.logit_scales.items(), *self.logit_biases.items()]:
            p = module.log_scale if isinstance(module, LogitScale) else module.bias
            if not isinstance(p, nn.Parameter):
                continue  # a fixed value (a buffer) never trains
            if key in keys and p.requires_grad:
                newly.append(p)
            p.requires_grad_(key not in keys)
        return newly

    def edge_loss(
        self,
        key: str,
        anchor: Tensor,
        other: Tensor,
        all_anchor: Tensor | None = None,
        all_other: Tensor | None = None,
        groups: Tensor | None = None,
        present: Tensor | None = None,
    ) -> Tensor:
        """One edge's loss; ``all_*``: the features of every rank (gathered here when the edge needs them).

        ``groups``: ``(B,)`` integer group ids of this rank's pairs (several positives, every kind).
        ``present``: ``(B,)`` bool, False for a pair whose partner is missing (every kind): it takes no
        part in the loss, neither as a query nor as a negative.
        """
        objective = self.objectives[key]
        if present is not None and objective.cyclip:
            raise ValueError(f"edge {key}: masks of missing pairs do not combine with CyCLIP's terms (loss.cyclip)")
        if objective.gathers and (all_anchor is None or all_other is None):
            all_anchor, all_other = gather_features(anchor, self.backprop), gather_features(other, self.backprop)
        loss = self._objective_loss(key, anchor, other, all_anchor, all_other, groups, present)
        if not objective.cyclip:
            return loss
        world = distributed_world(self.backprop)
        if world is None:
            in_modal, cross = cyclip_terms(anchor, other)
        elif self.local_loss or objective.kind == "siglip":  # a rank's rows' share, as the objective's
            in_modal, cross = cyclip_terms(anchor, other, all_anchor, all_other)
        else:
            in_modal, cross = cyclip_terms(all_anchor, all_other)
        return loss + objective.cyclip_in_modal * in_modal + objective.cyclip_cross_modal * cross

    def _objective_loss(
        self,
        key: str,
        anchor: Tensor,
        other: Tensor,
        all_anchor: Tensor | None = None,
        all_other: Tensor | None = None,
        groups: Tensor | None = None,
        present: Tensor | None = None,
    ) -> Tensor:
        """The edge's objective alone (no CyCLIP terms)."""
        objective, scale = self.objectives[key], self.logit_scales[key]()
        if objective.kind == "siglip":
            bias = self.logit_biases[key]()
            return siglip_distributed(
                anchor, other, scale, bias, objective.dist, self.backprop, all_other, groups, present
            )
        world = distributed_world(self.backprop)
        if world is None:
            all_anchor, all_other = anchor, other
        rank = 0 if world is None else world[0]
        local = self.local_loss and world is not None
        if objective.kind == "dcl":
            rows = (anchor, other) if local else (all_anchor, all_other)
            every = None if groups is None else (gather_ids(groups) if world is not None else groups)
            everywhere = None if present is None else (gather_ids(present) if world is not None else present)
            # A rank's own rows are summed over its share of the present pairs: the ranks' mean is the global mean.
            share = everywhere.sum().clamp(min=1) / world[1] if local and everywhere is not None else None
            return dcl(
                *rows, scale, objective.weighting, objective.sigma, objective.in_modal,
                all_anchor, all_other, row_offset=rank * anchor.shape[0] if local else 0,
                groups=groups if local else every, all_groups=every,
                present=present if local else everywhere, all_present=everywhere, count=share,
            )  # fmt: skip
        if present is not None and groups is not None:
            every, everywhere = (groups, present) if world is None else (gather_ids(groups), gather_ids(present))
            n = everywhere.sum().clamp(min=1)
            if world is None or not local:
                a, o = (anchor, other) if world is None else (all_anchor, all_other)
                return (
                    masked_multi_positive_nce(a, o, scale, every, every, everywhere, everywhere, n)
                    + masked_multi_positive_nce(o, a, scale, every, every, everywhere, everywhere, n)
                ) / 2
            share = n / world[1]  # each rank's rows over its share: the ranks' mean is the global mean
            return (
                masked_multi_positive_nce(anchor, all_other, scale, groups, every, present, everywhere, share)
                + masked_multi_positive_nce(other, all_anchor, scale, groups, every, present, everywhere, share)
            ) / 2
        if present is not None:
            if world is None:
                return masked_infonce(anchor, other, scale, present)
            everywhere = gather_ids(present)
            count = everywhere.sum().clamp(min=1)
            if not local:
                return masked_infonce(all_anchor, all_other, scale, everywhere)
            labels = torch.arange(anchor.shape[0], device=anchor.device) + rank * anchor.shape[0]
            share = count / world[1]  # each rank's rows over its share: the ranks' mean is the global mean
            return (
                masked_nce(anchor, all_other, scale, labels, present, everywhere, share)
                + masked_nce(other, all_anchor, scale, labels, present, everywhere, share)
            ) / 2
        if groups is not None:
            every = gather_ids(groups) if world is not None else groups
            if not local:
                return multi_positive_infonce(all_anchor, all_other, scale, every)
            labels = torch.arange(anchor.shape[0], device=anchor.device) + rank * anchor.shape[0]
            return (
                multi_positive_nce(anchor, all_other, scale, groups, every, labels)
                + multi_positive_nce(other, all_anchor, scale, groups, every, labels)
            ) / 2
        if not local:
            return infonce(all_anchor, all_other, scale)
        # Rows of this rank only: anchor_i vs all others, and other_i vs all anchors.
        labels = torch.arange(anchor.shape[0], device=anchor.device) + rank * anchor.shape[0]
        return (infonce_rows(anchor, all_other, scale, labels) + infonce_rows(other, all_anchor, scale, labels)) / 2

    def gather_by_modality(self, pairs: Mapping[str, tuple[Tensor, Tensor]]) -> dict[str, tuple[Tensor, Tensor]]:
        """Every rank's features of every edge that needs them, with one all-gather per modality per step.

        The features a modality has in all its gathering edges are concatenated, gathered once (rank-major),
        and each edge takes its columns back: in the image-anchored star graph that is 6 collectives instead
        of 10. Ranks gather the same modalities in the same (sorted) order, as collectives require. Edges that
        need no gather (SigLIP's ring variants) keep their own features.
        """
        world = distributed_world(self.backprop)
        if world is None:
            return dict(pairs)
        size = world[1]
        sides: dict[str, list[tuple[str, int, Tensor]]] = {}
        for key in sorted(pairs):
            if not self.objectives[key].gathers:
                continue
            for side, (m, x) in enumerate(zip(key.split("|"), pairs[key])):
                sides.setdefault(m, []).append((key, side, x))
        gathered: dict[str, list[Tensor]] = {k: [pairs[k][0], pairs[k][1]] for k in pairs}
        for m in sorted(sides):
            parts = sides[m]
            local = torch.cat([x for _, _, x in parts]) if len(parts) > 1 else parts[0][2]
            full = gather_features(local, self.backprop).view(size, local.shape[0], -1)
            start = 0
            for key, side, x in parts:
                gathered[key][side] = full[:, start : start + x.shape[0]].reshape(size * x.shape[0], -1)
                start += x.shape[0]
        return {k: (a, o) for k, (a, o) in gathered.items()}

    def forward(
        self,
        pairs: Mapping[str, tuple[Tensor, Tensor]],
        stage_weights: Mapping[str, float] | None = None,
        groups: Mapping[str, Tensor] | None = None,
        present: Mapping[str, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total and per-edge losses.

        Args:
            pairs: edge key -> (anchor-side embeddings, other-side embeddings).
            stage_weights: optional per-edge multipliers (a curriculum's replay weights); missing = 1.
            groups: optional edge key -> ``(B,)`` integer group ids of the pairs (multi-positive InfoNCE).
            present: optional edge key -> ``(B,)`` bool, False for pairs whose partner is missing.
        """
        if not pairs:
            raise ValueError("MultiEdgeLoss got no active edge")
        stage_weights, groups, present = stage_weights or {}, groups or {}, present or {}
        everyone = self.gather_by_modality(pairs)
        losses = {
            k: self.edge_loss(k, a, o, *everyone[k], groups=groups.get(k), present=present.get(k))
            for k, (a, o) in pairs.items()
        }
        total = sum(self.weights[k] * stage_weights.get(k, 1.0) * v for k, v in losses.items())
        return total, losses

    @torch.no_grad()
    def parameter_values(self) -> dict[str, dict[str, float]]:
        """Current ``logit_scales`` (every edge) and ``logit_biases`` (SigLIP edges), as plain floats."""
        return {
            "logit_scales": {k: float(s()) for k, s in self.logit_scales.items()},
            "logit_biases": {k: float(b()) for k, b in self.logit_biases.items()},
        }


def infonce_rows(rows: Tensor, columns: Tensor, logit_scale: Tensor, labels: Tensor) -> Tensor:
    """One direction of InfoNCE for some rows against every column (open_clip's local loss)."""
    return nn.functional.cross_entropy(logit_scale * rows @ columns.T, labels)
