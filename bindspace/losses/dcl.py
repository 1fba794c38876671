"""Decoupled contrastive learning (DCL, DCLW; Yeh et al., ECCV 2022, arXiv 2110.06848) for one edge.

DCL is InfoNCE without the positive in the denominator (eq. 6 of the paper), which removes the
negative-positive coupling that makes InfoNCE's gradient shrink when the positive is easy:

    l_i = -w_i * t * <a_i, o_i> + log sum_{j != i} exp(t * <a_i, o_j>)

and symmetrically from the other side, averaged over rows and the two directions. ``w_i = 1`` is
DCL; ``weighting="vmf"`` is DCLW's negative von Mises-Fisher weighting of the positives,
``w_i = 2 - n * softmax_i(<a_i, o_i> / sigma)`` over the ``n`` pairs of the (global) batch, with no
gradient through the weights (lightly's ``negative_mises_fisher_weights``). Its mean over the batch is 1.

Negatives: in a cross-modal edge they are the other modality's samples, as in CLIP. ``in_modal=True``
adds the same modality's other samples to the same denominator, the paper's two-view (SimCLR) form,
where negatives come from both views. lightly's ``DCLLoss`` adds the two log-sum-exps instead of taking
one over both; bindspace follows the paper's single sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bindspace.losses.infonce import check_pair

__all__ = ["DCL_WEIGHTINGS", "dcl", "vmf_weights"]

DCL_WEIGHTINGS = ("none", "vmf")


def vmf_weights(anchor: Tensor, other: Tensor, sigma: float, present: Tensor | None = None) -> Tensor:
    """DCLW's weights of the ``n`` positive pairs, ``2 - n * softmax(<a_i, o_i> / sigma)``; no gradient.

    ``present``: ``(n,)`` bool; the softmax and ``n`` then run over the present pairs only.
    """
    similarity = (anchor.detach() * other.detach()).sum(-1) / sigma  # (n,)
    if present is None:
        return 2 - similarity.shape[0] * torch.softmax(similarity, dim=0)
    share = torch.softmax(similarity.masked_fill(~present, float("-inf")), dim=0)
    return 2 - present.sum() * share


def _direction(
    rows: Tensor,
    columns: Tensor,
    same: Tensor,
    logit_scale: Tensor | float,
    positives: Tensor,
    weights: Tensor,
    in_modal: bool,
    absent: tuple[Tensor, Tensor, Tensor | float] | None = None,
) -> Tensor:
    """Mean over ``rows`` of ``-w * mean(positives) + logsumexp(negatives)``.

    ``positives`` (R, M) marks each row's positive columns (its own pair, or every pair of its group);
    the same mask removes them, or the row itself and its group, from the in-modal negatives of ``same``.
    ``absent``: ``(row_present (R,), column_present (M,), count)``: absent pairs are neither rows nor
    columns, and the present rows' sum is divided by ``count`` instead of averaged.
    """
    logits = logit_scale * rows @ columns.T  # (R, M)
    excluded = positives if absent is None else positives | ~absent[1][None, :]
    if absent is not None:  # an absent column is no positive either (an absent row keeps none: dropped below)
        positives = positives & absent[1][None, :]
    if positives.sum(1).eq(1).all():  # one positive per row: the logit itself, no averaging
        positive = logits.masked_select(positives)
    else:
        positive = logits.masked_fill(~positives, 0).sum(1) / positives.sum(1).clamp(min=1)
    negatives = logits.masked_fill(excluded, float("-inf"))
    if in_modal:
        negatives = torch.cat([negatives, (logit_scale * rows @ same.T).masked_fill(excluded, float("-inf"))], dim=1)
    per_row = -weights * positive + torch.logsumexp(negatives, dim=1)
    if absent is None:
        return per_row.mean()
    row_present, _, count = absent
    return torch.where(row_present, per_row, torch.zeros_like(per_row)).sum() / count


def dcl(
    anchor: Tensor,
    other: Tensor,
    logit_scale: Tensor | float,
    weighting: str = "none",
    sigma: float = 0.5,
    in_modal: bool = False,
    all_anchor: Tensor | None = None,
    all_other: Tensor | None = None,
    row_offset: int = 0,
    groups: Tensor | None = None,
    all_groups: Tensor | None = None,
    present: Tensor | None = None,
    all_present: Tensor | None = None,
    count: Tensor | float | None = None,
) -> Tensor:
    """Symmetric decoupled contrastive loss of one edge.

    Args:
        anchor: ``(R, D)`` unit-norm rows of the anchor side (this rank's, or the whole batch).
        other: ``(R, D)`` unit-norm rows of the other side; row i pairs with ``anchor[i]``.
        logit_scale: inverse temperature ``t``.
        weighting: ``none`` (DCL) or ``vmf`` (DCLW).
        sigma: DCLW's scale of the positive similarities.
        in_modal: also contrast against the same modality's other samples (the paper's two-view form).
        all_anchor, all_other: ``(M, D)`` every rank's rows, rank-major (default: ``anchor`` and ``other``).
        row_offset: index of ``anchor[0]``'s pair in ``all_*`` (``rank * R`` for a rank's own rows).
        groups, all_groups: ``(R,)`` and ``(M,)`` integer group ids of the rows and of every column (a
            manifest's ``group`` column): the pairs of a row's group are all its positives (their mean
            logit is the positive term) and none of them is a negative. With one member per group this is
            DCL exactly. ``all_groups`` defaults to ``groups``.
        present, all_present: ``(R,)`` and ``(M,)`` bool, whether each pair has both sides (a missing
            partner): absent pairs take no part, neither as rows nor as negatives, nor in DCLW's weights;
            equal to the loss on the present pairs alone. ``all_present`` defaults to ``present``.
        count: with ``present``, what the present rows' summed loss is divided by (default: their
            number; a rank's share of the global number for a rank's own rows).

    Returns:
        Scalar: the mean over the (present) rows and the two directions.
    """
    check_pair("dcl", anchor, other)
    if weighting not in DCL_WEIGHTINGS:
        raise ValueError(f"dcl weighting must be one of {DCL_WEIGHTINGS}, got {weighting!r}")
    all_anchor = anchor if all_anchor is None else all_anchor
    all_other = other if all_other is None else all_other
    if anchor.shape != other.shape or all_anchor.shape != all_other.shape:
        raise ValueError(f"dcl pairs rows: got {tuple(anchor.shape)} and {tuple(other.shape)}")
    labels = torch.arange(anchor.shape[0], device=anchor.device) + row_offset
    if groups is None:
        positives = F.one_hot(labels, all_other.shape[0]).bool()
    else:
        all_groups = groups if all_groups is None else all_groups
        if groups.shape != labels.shape or all_groups.shape != all_other.shape[:1]:
            raise ValueError(
                f"dcl groups must give one id per row and per column, got {tuple(groups.shape)} for "
                f"{anchor.shape[0]} rows and {tuple(all_groups.shape)} for {all_other.shape[0]} columns"
            )
        positives = groups[:, None] == all_groups[None, :]
        if not positives.gather(1, labels[:, None]).all():
            raise ValueError("dcl groups: a row's own pair is not in its group (ids disagree with all_groups)")
    absent = None
    if present is not None:
        all_present = present if all_present is None else all_present
        if present.shape != labels.shape or all_present.shape != all_other.shape[:1] or present.dtype != torch.bool:
            raise ValueError(
                f"dcl present must be bool, one per row and per column, got {tuple(present.shape)} "
                f"{present.dtype} for {anchor.shape[0]} rows and {tuple(all_present.shape)} for {all_other.shape[0]}"
            )
        absent = (present, all_present, present.sum().clamp(min=1) if count is None else count)
    if weighting == "vmf":
        weights = vmf_weights(all_anchor, all_other, sigma, all_present)[labels].to(anchor.dtype)
    else:
        weights = torch.ones(anchor.shape[0], dtype=anchor.dtype, device=anchor.device)
    a2o = _direction(anchor, all_other, all_anchor, logit_scale, positives, weights, in_modal, absent)
    o2a = _direction(other, all_anchor, all_other, logit_scale, positives, weights, in_modal, absent)
    return (a2o + o2a) / 2
