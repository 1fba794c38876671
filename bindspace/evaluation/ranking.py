"""Tie-aware retrieval metrics of one query set against one gallery (recall@k, median rank, mAP).

Scores are plain dot products: embeddings are expected to be unit-norm already, so this is cosine
similarity, and nothing here renormalises. A gallery item is *relevant* to a query when their keys
are equal: sample ids for instance-level retrieval, class labels for class-level retrieval.

Ties: every number is its expected value over all orderings of tied gallery items, each ordering
equally likely (McSherry & Najork, ECIR 2008; see :mod:`bindspace.evaluation.ties`). A collapsed
model (all embeddings equal) scores exactly chance; without ties the numbers are the usual ones.
R@k is the expected fraction of queries with a relevant item in the top k, mAP the mean expected AP,
and the median rank the median over queries of each query's expected 1-based rank of its first
relevant item.

Similarities are computed a block of queries at a time (memory O(block * M), never N x M), without
gradients, on the inputs' device; a block holds at most chunk_size queries and 2**24 scores.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from bindspace.evaluation.ties import Ranks, chance_ap, chance_ranks, exact_scores, expected_ap_terms
from bindspace.evaluation.topk import check_embeddings

_MAX_BLOCK_SCORES = 2**24  # a block's (rows, M) scores; its int64 tie counts add ~5x that in bytes


def _check_keys(keys: Tensor, num_rows: int, name: str, device: torch.device) -> Tensor:
    if keys.shape != (num_rows,):
        raise ValueError(f"{name} must have shape ({num_rows},), one per row, got {tuple(keys.shape)}")
    return keys.to(device)


def _block_counts(scores: Tensor, relevant: Tensor, with_ap: bool) -> tuple[Ranks, Tensor | None]:
    """(c, M) scores and relevance -> tie counts of each row's first relevant group, and (c,) expected AP."""
    if bool((relevant.sum(dim=1) == 1).all()):
        # The usual instance-level case: one relevant item, no sort needed.
        best = scores.masked_fill(~relevant, -torch.inf).amax(dim=1, keepdim=True)  # (c, 1)
        higher, tied = (scores > best).sum(dim=1), (scores == best).sum(dim=1)
        ranks = Ranks(higher, tied, torch.ones_like(higher))
        ap = expected_ap_terms(higher, tied, torch.zeros_like(higher), ranks.relevant_tied) if with_ap else None
        return ranks, ap
    m = scores.shape[1]
    ascending, order = scores.sort(dim=1)
    rel = relevant.gather(1, order)  # (c, M) relevance in ascending score order
    positions = torch.arange(m, device=scores.device)
    # Tie groups are runs of equal sorted scores: a running max of run starts gives each item's first
    # index, a running min (from the right) of run ends one past its last (5x faster than searchsorted).
    starts = torch.ones_like(rel)
    starts[:, 1:] = ascending[:, 1:] != ascending[:, :-1]
    ends = torch.ones_like(rel)
    ends[:, :-1] = starts[:, 1:]
    left = torch.where(starts, positions, 0).cummax(dim=1).values
    right = torch.where(ends, positions + 1, m).flip(1).cummin(dim=1).values.flip(1)
    cum = F.pad(rel.long().cumsum(dim=1), (1, 0))  # (c, M + 1): relevant items among the lowest p
    top = torch.where(rel, positions, -1).amax(dim=1, keepdim=True)  # the highest-scoring relevant item
    r_top, l_top = right.gather(1, top), left.gather(1, top)
    ranks = Ranks(
        (m - r_top)[:, 0], (r_top - l_top)[:, 0], (cum.gather(1, r_top) - cum.gather(1, l_top))[:, 0]
    )  # fmt: skip
    if not with_ap:
        return ranks, None
    rows, cols = rel.nonzero(as_tuple=True)  # every relevant item
    r_rel, l_rel = right[rows, cols], left[rows, cols]
    above = cum[rows, -1] - cum[rows, r_rel]
    terms = expected_ap_terms(m - r_rel, r_rel - l_rel, above, cum[rows, r_rel] - cum[rows, l_rel])
    total = cum[:, -1].double()
    return ranks, torch.zeros(len(scores), dtype=torch.float64, device=scores.device).index_add_(0, rows, terms) / total


@torch.no_grad()
def scan(
    query: Tensor,
    gallery: Tensor,
    relevances: Sequence[tuple[Tensor, Tensor]],
    chunk_size: int,
    with_ap: bool,
) -> list[tuple[Ranks, Tensor]]:
    """The block loop: per (query_keys, gallery_keys) relevance, (N,) ranks and (N,) float64 AP.

    Every relevance is scored from the same block of scores, so instance and class level cost one matmul.
    """
    query, gallery = check_embeddings(query, gallery, chunk_size)
    checked = []
    for query_keys, gallery_keys in relevances:
        query_keys = _check_keys(query_keys, len(query), "query_keys", query.device)
        gallery_keys = _check_keys(gallery_keys, len(gallery), "gallery_keys", query.device)
        missing = (~torch.isin(query_keys, gallery_keys)).nonzero().flatten()
        if len(missing) > 0:
            raise ValueError(
                f"{len(missing)} of {len(query)} queries have no relevant gallery item (no equal key), "
                f"e.g. query rows {missing[:5].tolist()}; their rank and AP are undefined"
            )
        checked.append((query_keys, gallery_keys))
    rows = max(1, min(chunk_size, _MAX_BLOCK_SCORES // max(1, len(gallery))))
    parts: list[list[tuple[Ranks, Tensor | None]]] = [[] for _ in checked]
    for start in range(0, len(query), rows):
        scores = exact_scores(query[start : start + rows], gallery)  # (c, M)
        for part, (query_keys, gallery_keys) in zip(parts, checked, strict=True):
            relevant = query_keys[start : start + rows, None] == gallery_keys[None, :]  # (c, M)
            part.append(_block_counts(scores, relevant, with_ap))
    empty = query.new_empty(0, dtype=torch.float64)
    return [
        (
            Ranks.cat([r for r, _ in part]) if part else Ranks(*(query.new_empty(0, dtype=torch.long),) * 3),
            torch.cat([a for _, a in part]) if with_ap and part else empty,
        )
        for part in parts
    ]


def rank_of_matches(
    query: Tensor, gallery: Tensor, query_keys: Tensor, gallery_keys: Tensor, chunk_size: int = 4096
) -> Ranks:
    """For every query, where its first relevant gallery item lands in the ranking, ties included.

    Args:
        query: (N, D) unit-norm query embeddings.
        gallery: (M, D) unit-norm gallery embeddings.
        query_keys: (N,) key per query; gallery items with an equal key are relevant.
        gallery_keys: (M,) key per gallery item.
        chunk_size: at most this many queries are scored at once.

    Returns:
        :class:`~bindspace.evaluation.ties.Ranks`: per query, items scoring strictly above its best
        relevant item (``higher``, the 0-based rank without ties), the size of that item's tie group and
        the relevant items in it. ``.expected`` is the expected 0-based rank; pass it to `recall_at_k`.

    Raises:
        ValueError: on mismatched shapes, non-finite values, or a query with no relevant item.
    """
    return scan(query, gallery, [(query_keys, gallery_keys)], chunk_size, with_ap=False)[0][0]


def average_precision(
    query: Tensor, gallery: Tensor, query_keys: Tensor, gallery_keys: Tensor, chunk_size: int = 4096
) -> Tensor:
    """Per-query expected average precision over all relevant gallery items (mAP is its mean).

    Args and Raises are as in `rank_of_matches`. When a query has several relevant items its block is
    sorted, which peaks at about 60 bytes per score of the block.

    Returns:
        (N,) float32 AP in [0, 1], averaged over random orders of tied items.
    """
    return scan(query, gallery, [(query_keys, gallery_keys)], chunk_size, with_ap=True)[0][1].float()


def check_ks(ks: Sequence[int]) -> None:
    """Raises ValueError unless ks is a non-empty sequence of positive ints."""
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"ks must be non-empty positive ints, got {ks!r}")


def recall_at_k(ranks: Ranks | Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Percentage of queries whose first relevant item is in the top k (expected over tie orders).

    Args:
        ranks: from `rank_of_matches`; or an (N,) tensor of exact 0-based ranks (no ties).
        ks: cut-offs, each >= 1.

    Returns:
        {"R@k": percent} for every k, in the order given.
    """
    if not isinstance(ranks, Ranks):
        if ranks.ndim != 1:
            raise ValueError(f"ranks must be a non-empty (N,) tensor, got shape {tuple(ranks.shape)}")
        ranks = Ranks(ranks.long(), torch.ones_like(ranks, dtype=torch.long), torch.ones_like(ranks, dtype=torch.long))
    if len(ranks) == 0:
        raise ValueError("ranks must not be empty")
    check_ks(ks)
    # A float64 sum of 0/1 values is an exact integer: without ties R@k is 100 * count / N exactly.
    return {f"R@{k}": 100.0 * float(ranks.hit_probability(k).sum()) / len(ranks) for k in ks}


def _median(values: Tensor) -> float:
    """The median; for even N the mean of the middle two, as numpy.median does."""
    ordered = values.double().sort().values
    n = len(ordered)
    return float((ordered[(n - 1) // 2] + ordered[n // 2]) / 2)


def per_query_values(ranks: Ranks, ap: Tensor, ks: Sequence[int]) -> dict[str, Tensor]:
    """{"R@k": (N,) expected hit per k, "AP": (N,), "rank": (N,) expected 1-based rank}, float64."""
    return {**{f"R@{k}": ranks.hit_probability(k) for k in ks}, "AP": ap, "rank": ranks.expected + 1.0}


def retrieval_per_query(
    query: Tensor,
    gallery: Tensor,
    query_keys: Tensor,
    gallery_keys: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 4096,
) -> dict[str, Tensor]:
    """Each query's own expected R@k, AP and rank (the values `retrieval_metrics` averages).

    Returns:
        {"R@k": (N,) float64 in [0, 1] per k, "AP": (N,) float64 in [0, 1], "rank": (N,) float64
        expected 1-based rank of the first relevant item}.
    """
    check_ks(ks)
    ranks, ap = scan(query, gallery, [(query_keys, gallery_keys)], chunk_size, with_ap=True)[0]
    if len(ranks) == 0:
        raise ValueError("need at least one query")
    return per_query_values(ranks, ap, ks)


def aggregate(per_query: dict[str, Tensor], ks: Sequence[int]) -> dict[str, float]:
    """Per-query values (`per_query_values`) -> the `retrieval_metrics` record."""
    n = len(per_query["AP"])
    return {
        **{f"R@{k}": 100.0 * float(per_query[f"R@{k}"].sum()) / n for k in ks},
        "median_rank": _median(per_query["rank"]),
        "mAP": 100.0 * float(per_query["AP"].mean()),
    }


def retrieval_metrics(
    query: Tensor,
    gallery: Tensor,
    query_keys: Tensor,
    gallery_keys: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 4096,
) -> dict[str, float]:
    """Recall@k, median rank and mAP of one query set against one gallery, tie-aware.

    Args:
        query, gallery, query_keys, gallery_keys, chunk_size: as in `rank_of_matches`.
        ks: recall cut-offs.

    Returns:
        {"R@1": %, "R@5": %, "R@10": %, "median_rank": 1-based, "mAP": %}.
    """
    return aggregate(retrieval_per_query(query, gallery, query_keys, gallery_keys, ks, chunk_size), ks)


def chance_levels(query_keys: Tensor, gallery_keys: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """What a random ranking of this gallery scores on average: the metrics of a fully tied ranking.

    Each query's relevant count is the number of gallery items with its key, so class-level chance
    follows the actual class sizes. With one relevant item among M: R@k = 100 k/M, mAP = 100 H(M)/M,
    median rank (M + 1)/2.

    Returns:
        {"R@k": %, ..., "median_rank": 1-based, "mAP": %}.
    """
    check_ks(ks)
    values, counts = torch.unique(gallery_keys.cpu(), return_counts=True)
    where = torch.searchsorted(values, query_keys.cpu()).clamp(max=len(values) - 1)
    relevant = torch.where(values[where] == query_keys.cpu(), counts[where], 0)
    if len(relevant) == 0 or bool((relevant == 0).any()):
        raise ValueError("every query needs at least one relevant gallery item to have a chance level")
    m = len(gallery_keys)
    ranks = chance_ranks(relevant, m)
    return aggregate(per_query_values(ranks, chance_ap(relevant, m), ks), ks)
