"""CyCLIP's consistency terms (Goel et al., NeurIPS 2022, arXiv 2205.14459) for one edge.

Two regularisers added to an edge's contrastive loss, on the cosine similarities of unit-norm embeddings:

- cross-modal: ``1/N sum_j sum_k (<a_j, o_k> - <a_k, o_j>)^2``, the similarity matrix made symmetric;
- in-modal: ``1/N sum_j sum_k (<a_j, a_k> - <o_j, o_k>)^2``, the two modalities' geometries made alike,

as the paper's eqs. (3) and (4) and its code (``(logits - logits.t()).square().mean() / scale^2 * N``).
"""

from __future__ import annotations

from torch import Tensor

from bindspace.losses.infonce import check_pair

__all__ = ["cyclip_terms"]


def cyclip_terms(
    anchor: Tensor, other: Tensor, all_anchor: Tensor | None = None, all_other: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """CyCLIP's ``(in_modal, cross_modal)`` consistency of some rows against every sample of the batch.

    Args:
        anchor: ``(R, D)`` unit-norm rows of the anchor side (this rank's, or the whole batch).
        other: ``(R, D)`` unit-norm rows of the other side; row i pairs with ``anchor[i]``.
        all_anchor, all_other: ``(M, D)`` every rank's samples (default: the rows themselves).

    Returns:
        Both terms as the rows' share: the sum of their rows' squared differences over ``R``. With every
        row (``R == M``) they are the paper's terms; the mean over ranks of the ranks' shares is too.
    """
    check_pair("cyclip", anchor, other)
    all_anchor = anchor if all_anchor is None else all_anchor
    all_other = other if all_other is None else all_other
    rows = anchor.shape[0]
    cross = (anchor @ all_other.T - other @ all_anchor.T).square().sum() / rows  # <a_j,o_k> - <a_k,o_j>
    in_modal = (anchor @ all_anchor.T - other @ all_other.T).square().sum() / rows
    return in_modal, cross
