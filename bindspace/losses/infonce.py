"""Symmetric InfoNCE (CLIP), with one positive per row or several (samples that share a group id)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "check_pair",
    "group_targets",
    "infonce",
    "masked_infonce",
    "masked_multi_positive_nce",
    "masked_nce",
    "multi_positive_infonce",
    "multi_positive_nce",
    "soft_target_cross_entropy",
]


def check_pair(name: str, anchor: Tensor, other: Tensor) -> None:
    """Both sides are ``(rows, D)`` with the same ``D``."""
    if anchor.ndim != 2 or other.ndim != 2 or anchor.shape[1] != other.shape[1]:
        raise ValueError(
            f"{name} expects (B, D) and (M, D) embeddings, got {tuple(anchor.shape)} and {tuple(other.shape)}"
        )


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
    check_pair("infonce", anchor, other)
    if labels is None:
        if anchor.shape[0] != other.shape[0]:
            raise ValueError(f"without labels the batches must match, got {anchor.shape[0]} and {other.shape[0]}")
        labels = torch.arange(anchor.shape[0], device=anchor.device)
    logits = logit_scale * anchor @ other.T  # (B, M)
    return (
        F.cross_entropy(logits, labels)
        + F.cross_entropy(logits.T[labels], torch.arange(len(labels), device=anchor.device))
    ) / 2


def group_targets(row_groups: Tensor, column_groups: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(R, M)`` target distributions: each row's probability spread evenly over the columns of its group."""
    same = (row_groups[:, None] == column_groups[None, :]).to(dtype)
    counts = same.sum(1, keepdim=True)
    if bool((counts == 0).any()):
        raise ValueError("multi-positive InfoNCE: a row's group has no member among the columns (its own pair)")
    return same / counts


def soft_target_cross_entropy(logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of ``(R, M)`` logits against soft ``targets``, mean over rows.

    Computed as the hard-label cross-entropy on each row's own pair (``labels``) plus the change that
    moving its target mass over its group makes. With one-hot targets at ``labels`` the change is 0.0
    exactly, so the loss and its gradients are :func:`torch.nn.functional.cross_entropy`'s bit for bit.
    """
    logp = F.log_softmax(logits, dim=1)
    shift = (logp.gather(1, labels[:, None]).squeeze(1) - (targets * logp).sum(1)).mean()
    return F.cross_entropy(logits, labels) + shift


def multi_positive_nce(
    rows: Tensor,
    columns: Tensor,
    logit_scale: Tensor | float,
    row_groups: Tensor,
    column_groups: Tensor,
    labels: Tensor,
) -> Tensor:
    """One direction of multi-positive InfoNCE: each row's target is uniform over the columns of its group.

    Args:
        rows: ``(R, D)`` unit-norm embeddings (this rank's, or all of them).
        columns: ``(M, D)`` unit-norm embeddings of the other side (every rank's, rank-major).
        logit_scale: inverse temperature.
        row_groups: ``(R,)`` integer group id of each row's pair.
        column_groups: ``(M,)`` group id of each column's pair.
        labels: ``(R,)`` index of each row's own pair among the columns.

    Returns:
        Scalar: the mean over rows of the cross-entropy against the soft targets.
    """
    check_pair("multi_positive_nce", rows, columns)
    _check_groups(row_groups, rows.shape[0])
    _check_groups(column_groups, columns.shape[0])
    logits = logit_scale * rows @ columns.T  # (R, M)
    return soft_target_cross_entropy(logits, labels, group_targets(row_groups, column_groups, logits.dtype))


def masked_multi_positive_nce(
    rows: Tensor,
    columns: Tensor,
    logit_scale: Tensor | float,
    row_groups: Tensor,
    column_groups: Tensor,
    row_present: Tensor,
    column_present: Tensor,
    count: Tensor | float,
) -> Tensor:
    """One direction of multi-positive InfoNCE where absent pairs take no part (masks and groups at once).

    Each present row's target is uniform over the present columns of its group; absent columns are no
    candidates and absent rows no queries. The present rows' summed cross-entropy is divided by ``count``.
    Equal to :func:`multi_positive_nce` on the present pairs alone.
    """
    check_pair("masked_multi_positive_nce", rows, columns)
    _check_groups(row_groups, rows.shape[0])
    _check_groups(column_groups, columns.shape[0])
    logits = (logit_scale * rows @ columns.T).masked_fill(~column_present[None, :], float("-inf"))  # (R, M)
    logp = F.log_softmax(logits, dim=1)
    same = (row_groups[:, None] == column_groups[None, :]) & column_present[None, :]
    targets = same.to(logp.dtype) / same.sum(1, keepdim=True).clamp(min=1)
    # Where the target is 0 the (possibly -inf) log-probability is left out, not multiplied by 0.
    per_row = -torch.where(same, targets * logp, torch.zeros_like(logp)).sum(1)
    return torch.where(row_present, per_row, torch.zeros_like(per_row)).sum() / count


def _check_groups(groups: Tensor, rows: int) -> None:
    if groups.shape != (rows,):
        raise ValueError(f"group ids must be one per pair: ({rows},), got {tuple(groups.shape)}")


def multi_positive_infonce(anchor: Tensor, other: Tensor, logit_scale: Tensor | float, groups: Tensor) -> Tensor:
    """Symmetric InfoNCE where every pair of the same group is a positive (several captions of one sound).

    Row ``i``'s target is uniform over the columns ``j`` with ``groups[j] == groups[i]``, so members of a
    group are not each other's negatives. With one member per group it is :func:`infonce` bit for bit
    (loss and gradients; see :func:`soft_target_cross_entropy`).

    Args:
        anchor: ``(B, D)`` unit-norm embeddings; row ``i`` pairs with row ``i`` of ``other``.
        other: ``(B, D)`` unit-norm embeddings.
        logit_scale: inverse temperature.
        groups: ``(B,)`` integer group id of each pair.

    Returns:
        Scalar loss, the mean of both directions.
    """
    check_pair("multi_positive_infonce", anchor, other)
    if anchor.shape[0] != other.shape[0]:
        raise ValueError(f"multi_positive_infonce pairs rows: batches of {anchor.shape[0]} and {other.shape[0]}")
    _check_groups(groups, anchor.shape[0])
    labels = torch.arange(anchor.shape[0], device=anchor.device)
    logits = logit_scale * anchor @ other.T  # (B, B), used in both directions as infonce does
    targets = group_targets(groups, groups, logits.dtype)  # symmetric: a group's members share its size
    return (
        soft_target_cross_entropy(logits, labels, targets)
        + soft_target_cross_entropy(logits.T[labels], labels, targets.T[labels])
    ) / 2


def masked_nce(
    rows: Tensor,
    columns: Tensor,
    logit_scale: Tensor | float,
    labels: Tensor,
    row_present: Tensor,
    column_present: Tensor,
    count: Tensor | float,
) -> Tensor:
    """One direction of InfoNCE where absent pairs take no part: not as queries, not as candidates.

    Args:
        rows: ``(R, D)`` unit-norm embeddings.
        columns: ``(M, D)`` unit-norm embeddings of the other side (every rank's, rank-major).
        logit_scale: inverse temperature.
        labels: ``(R,)`` index of each row's own pair among the columns.
        row_present: ``(R,)`` bool, whether each row's pair is present (its partner exists).
        column_present: ``(M,)`` bool, the same for the columns.
        count: what the rows' summed cross-entropy is divided by (the number of present pairs, or a rank's share).

    Returns:
        Scalar: the present rows' cross-entropy against the present columns, summed, over ``count``.
    """
    logits = (logit_scale * rows @ columns.T).masked_fill(~column_present[None, :], float("-inf"))  # (R, M)
    # An absent row's own column is -inf too: its (infinite) loss is dropped, and so is its zero gradient.
    per_row = F.cross_entropy(logits, labels, reduction="none")
    return torch.where(row_present, per_row, torch.zeros_like(per_row)).sum() / count


def masked_infonce(anchor: Tensor, other: Tensor, logit_scale: Tensor | float, present: Tensor) -> Tensor:
    """Symmetric InfoNCE over the present pairs of a batch (``present[i]``: pair i has both sides).

    Equal to :func:`infonce` on the present pairs alone, with the batch's shapes unchanged (an absent pair's
    embeddings, whatever they hold, get no gradient). A batch with no present pair has loss 0.

    Args:
        anchor: ``(B, D)`` unit-norm embeddings; row ``i`` pairs with row ``i`` of ``other``.
        other: ``(B, D)`` unit-norm embeddings.
        logit_scale: inverse temperature.
        present: ``(B,)`` bool.
    """
    check_pair("masked_infonce", anchor, other)
    _check_groups(present, anchor.shape[0])
    labels = torch.arange(anchor.shape[0], device=anchor.device)
    count = present.sum().clamp(min=1)
    return (
        masked_nce(anchor, other, logit_scale, labels, present, present, count)
        + masked_nce(other, anchor, logit_scale, labels, present, present, count)
    ) / 2
