"""SigLIP's sigmoid loss (Zhai et al., 2023), on one process and chunked across ranks.

Every pair ``(i, j)`` of an edge's batch is an independent binary problem: ``+1`` on the diagonal
(the paired samples), ``-1`` elsewhere, with logits ``t * <a_i, o_j> + b``. The loss is the sum over
the ``(B, B)`` blocks of the batch divided by the number of rows, as big_vision's ``siglip.py`` and
open_clip's ``SigLipLoss``. Since the matrix is a sum of independent terms, a rank computes one
``(B, B)`` block at a time and never a ``(B, NB)`` or ``(NB, NB)`` matrix: its rows against its own
columns, then against the columns of every other rank, which arrive one chunk at a time (``dist``):

- ``bidir``: a ring passing chunks left and right at once, ``ceil((N - 1) / 2)`` steps (open_clip's default);
- ``shift``: a ring passing chunks to the right, ``N - 1`` steps;
- ``reduce``: one sum all-reduce per rank's chunk (the owner contributes it, the others zeros);
- ``gather``: the all-gathered columns (what the edge's softmax losses gather anyway), taken chunk by chunk.

Autograd keeps each block's sigmoid input for backward (``2 N B^2`` entries with its buffer, about two
``(B, NB)`` matrices in all, as InfoNCE's local loss) and the received ``(B, D)`` chunks; docs/scaling.md
gives the measured bytes. Each rank's loss is its ``B`` rows' share; DDP's average of the ranks'
gradients is then the gradient of the loss over the global batch when the chunks carry gradients back
(``backprop="global"``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bindspace.losses.distributed import distributed_world, exchange, gather_features, gather_ids, reduce_from
from bindspace.losses.infonce import check_pair

__all__ = ["SIGLIP_DIST", "siglip", "siglip_block", "siglip_distributed"]

SIGLIP_DIST = ("bidir", "shift", "reduce", "gather")


def siglip_block(
    scaled_anchor: Tensor,
    other: Tensor,
    logit_bias: Tensor,
    paired: bool,
    positives: Tensor | None = None,
    keep: Tensor | None = None,
) -> Tensor:
    """Sum of ``-log sigmoid(label * logit)`` over one ``(B, M)`` block, ``logit = <t a_i, o_j> + b``.

    ``scaled_anchor``: ``t * anchor``, scaled once for all blocks. ``paired``: the block holds the
    positives on its diagonal (needs ``B == M``); otherwise all its labels are negative. ``positives``:
    a ``(B, M)`` mask of the positive pairs instead (several per row: samples that share a group).
    ``keep``: a ``(B, M)`` mask of the terms summed (pairs whose both sides are present).
    """
    if keep is not None:
        if positives is None and paired:
            positives = torch.eye(*keep.shape, dtype=torch.bool, device=keep.device)
        labels = -torch.ones_like(keep, dtype=scaled_anchor.dtype)
        if positives is not None:
            labels = labels.masked_fill(positives, 1.0)
        terms = -F.logsigmoid(labels * (scaled_anchor @ other.T + logit_bias))
        return torch.where(keep, terms, torch.zeros_like(terms)).sum()
    logits = scaled_anchor @ other.T + logit_bias  # (B, M)
    if positives is not None and positives.any():
        labels = positives.to(logits.dtype) * 2 - 1
        return -F.logsigmoid(labels * logits).sum()
    if not paired or positives is not None:  # all labels -1: no label matrix to build or keep for backward
        return -F.logsigmoid(-logits).sum()
    labels = -torch.ones_like(logits)
    labels.fill_diagonal_(1.0)
    return -F.logsigmoid(labels * logits).sum()


def siglip(
    anchor: Tensor,
    other: Tensor,
    logit_scale: Tensor,
    logit_bias: Tensor,
    groups: Tensor | None = None,
    present: Tensor | None = None,
) -> Tensor:
    """The sigmoid loss of one batch: ``(B, D)`` pairs, the sum over the ``(B, B)`` logits over ``B``.

    ``groups``: ``(B,)`` integer group ids; pairs of one group are positives (label ``+1``), not only
    the diagonal. With one member per group this is the plain loss bit for bit. ``present``: ``(B,)``
    bool, whether each pair has both sides; absent pairs are neither rows nor columns (equal to the loss
    of the present pairs alone, the sum over the number of present pairs).
    """
    check_pair("siglip", anchor, other)
    rows = anchor.shape[0]
    if other.shape[0] != rows:
        raise ValueError(f"siglip pairs row i with row i: batches of {rows} and {other.shape[0]}")
    positives = None if groups is None else _same_group(groups, groups, rows)
    if present is None:
        return siglip_block(logit_scale * anchor, other, logit_bias, paired=True, positives=positives) / rows
    keep = _check_present(present, rows)[:, None] & present[None, :]
    block = siglip_block(logit_scale * anchor, other, logit_bias, paired=True, positives=positives, keep=keep)
    return block / present.sum().clamp(min=1)


def siglip_distributed(
    anchor: Tensor,
    other: Tensor,
    logit_scale: Tensor,
    logit_bias: Tensor,
    dist: str = "bidir",
    backprop: str = "global",
    all_other: Tensor | None = None,
    groups: Tensor | None = None,
    present: Tensor | None = None,
) -> Tensor:
    """This rank's share of the sigmoid loss of the global batch, one ``(B, B)`` block at a time.

    Args:
        anchor: ``(B, D)`` this rank's anchor-side embeddings.
        other: ``(B, D)`` this rank's other-side embeddings (row i pairs with ``anchor[i]``).
        logit_scale: the temperature ``t`` (already exponentiated).
        logit_bias: the bias ``b``.
        dist: how the other ranks' columns arrive (:data:`SIGLIP_DIST`).
        backprop: ``global`` (the chunks carry gradients back), ``local`` (constants) or ``none`` (in-batch only).
        all_other: with ``dist="gather"``, every rank's ``other`` rank-major (gathered here when not given).
        groups: ``(B,)`` integer group ids of this rank's pairs: pairs of one group, on any rank, are
            positives. The ids (not the features) are all-gathered once, so each arriving chunk is
            labelled by its owner's ids; no block larger than ``(B, B)`` is built.
        present: ``(B,)`` bool, whether each of this rank's pairs has both sides: absent pairs take no
            part on any rank (the flags are all-gathered like ``groups``), and the loss is over the
            number of present pairs of the global batch.

    Returns:
        Scalar: this rank's rows' loss over ``B``; the mean over ranks is the global batch's loss.
    """
    if dist not in SIGLIP_DIST:
        raise ValueError(f"siglip dist must be one of {SIGLIP_DIST}, got {dist!r}")
    check_pair("siglip", anchor, other)
    scaled = logit_scale * anchor  # (B, D), once for every block
    rows = anchor.shape[0]
    world = distributed_world(backprop)
    if present is None:
        count: Tensor | float = rows
        keep, everywhere = None, None
    else:
        keep = _check_present(present, rows)[:, None] & present[None, :]
        everywhere = present if world is None else gather_ids(present).view(world[1], rows)
        count = present.sum().clamp(min=1) if world is None else everywhere.sum().clamp(min=1) / world[1]
    own = None if groups is None else _same_group(groups, groups, rows)
    loss = siglip_block(scaled, other, logit_bias, paired=True, positives=own, keep=keep) / count  # own pairs
    if world is None:
        return loss
    rank, size = world
    every = None if groups is None else gather_ids(groups).view(size, rows)
    for owner, chunk in _other_chunks(other, rank, size, dist, backprop, all_other):
        m = chunk.shape[0]
        mates = None if every is None else groups[:, None] == every[owner][None, :m]
        kept = None if everywhere is None else present[:, None] & everywhere[owner][None, :m]
        loss = loss + siglip_block(scaled, chunk, logit_bias, paired=False, positives=mates, keep=kept) / count
    return loss


def _check_present(present: Tensor, rows: int) -> Tensor:
    if present.shape != (rows,) or present.dtype != torch.bool:
        raise ValueError(f"siglip present must be ({rows},) bool, got {tuple(present.shape)} {present.dtype}")
    return present


def _same_group(row_groups: Tensor, column_groups: Tensor, rows: int) -> Tensor:
    if row_groups.shape != (rows,) or row_groups.dtype.is_floating_point:
        raise ValueError(
            f"siglip groups must be ({rows},) integer ids, got {tuple(row_groups.shape)} {row_groups.dtype}"
        )
    return row_groups[:, None] == column_groups[None, :]


def _other_chunks(other: Tensor, rank: int, size: int, dist: str, backprop: str, all_other: Tensor | None):
    """The other ranks' ``(B, D)`` columns with their owner rank, one at a time (a generator: each is used
    before the next arrives)."""
    if dist == "gather":
        if all_other is None:
            all_other = gather_features(other, backprop)
        chunks = all_other.view(size, other.shape[0], -1)
        yield from ((i, chunks[i]) for i in range(size) if i != rank)
    elif dist == "reduce":
        for owner in range(size):
            chunk = reduce_from(other, owner, rank, backprop)
            if owner == rank:
                # Every rank must use every all-reduce's result, or its backward would not run on all ranks.
                yield owner, chunk[:0]
            else:
                yield owner, chunk
    elif dist == "shift":
        right, left = (rank + 1) % size, (rank - 1) % size
        chunk = other
        for step in range(1, size):  # step s brings rank (rank - s)'s columns
            (chunk,) = exchange([chunk], [right], [left], backprop)
            yield (rank - step) % size, chunk
    else:  # bidir
        right, left = (rank + 1) % size, (rank - 1) % size
        to_right = to_left = other
        for step in range(1, (size - 1) // 2 + 1):  # step s brings ranks rank - s and rank + s at once
            to_right, to_left = exchange([to_right, to_left], [right, left], [left, right], backprop)
            yield (rank - step) % size, to_right
            yield (rank + step) % size, to_left
        if (size - 1) % 2:  # an even world: the rank opposite, rank + size / 2, is still missing
            (chunk,) = exchange([to_right], [right], [left], backprop)
            yield (rank + size // 2) % size, chunk
