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


def vmf_weights(anchor: Tensor, other: Tensor, sigma: float) -> Tensor:
    """DCLW's weights of the ``n`` positive pairs, ``2 - n * softmax(<a_i, o_i> / sigma)``; no gradient."""
    similarity = (anchor.detach() * other.detach()).sum(-1) / sigma  # (n,)
    return 2 - similarity.shape[0] * torch.softmax(similarity, dim=0)


def _direction(
    rows: Tensor,
    columns: Tensor,
    same: Tensor,
    logit_scale: Tensor | float,
    labels: Tensor,
    weights: Tensor,
    in_modal: bool,
) -> Tensor:
    """Mean over ``rows`` of ``-w * positive + logsumexp(negatives)``; ``columns[labels[i]]`` is row i's positive."""
    logits = logit_scale * rows @ columns.T  # (R, M)
    positive = logits.gather(1, labels[:, None]).squeeze(1)
    itself = F.one_hot(labels, columns.shape[0]).bool()  # the positive, or the row itself among `same`
    negatives = logits.masked_fill(itself, float("-inf"))
    if in_modal:
        negatives = torch.cat([negatives, (logit_scale * rows @ same.T).masked_fill(itself, float("-inf"))], dim=1)
    return (-weights * positive + torch.logsumexp(negatives, dim=1)).mean()


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

    Returns:
        Scalar: the mean over the rows and the two directions.
    """
    check_pair("dcl", anchor, other)
    if weighting not in DCL_WEIGHTINGS:
        raise ValueError(f"dcl weighting must be one of {DCL_WEIGHTINGS}, got {weighting!r}")
    all_anchor = anchor if all_anchor is None else all_anchor
    all_other = other if all_other is None else all_other
    if anchor.shape != other.shape or all_anchor.shape != all_other.shape:
        raise ValueError(f"dcl pairs rows: got {tuple(anchor.shape)} and {tuple(other.shape)}")
    labels = torch.arange(anchor.shape[0], device=anchor.device) + row_offset
    if weighting == "vmf":
        weights = vmf_weights(all_anchor, all_other, sigma)[labels].to(anchor.dtype)
    else:
        weights = torch.ones(anchor.shape[0], dtype=anchor.dtype, device=anchor.device)
    a2o = _direction(anchor, all_other, all_anchor, logit_scale, labels, weights, in_modal)
    o2a = _direction(other, all_anchor, all_other, logit_scale, labels, weights, in_modal)
    return (a2o + o2a) / 2
