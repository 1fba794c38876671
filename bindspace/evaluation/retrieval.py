"""Cross-modal retrieval metrics (recall@k, median rank, mAP), exact and memory-bounded.

Scores are plain dot products: embeddings are expected to be unit-norm already, so this is cosine
similarity, and nothing here renormalises. A gallery item is *relevant* to a query when their keys
are equal: sample ids for instance-level retrieval, class labels for class-level retrieval.

Ties are resolved optimistically everywhere: a relevant item ranks ahead of every item with the same
score. So the rank of the first relevant item is the number of items scoring strictly higher, and
with a single relevant item AP == 1 / (rank + 1). Similarities are computed a block of queries at a
time (memory O(chunk_size * M), never N x M), in float32 on the inputs' device, without gradients.
"""

import itertools
import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

# "<query>-><gallery>" -> {"R@1": ..., "median_rank": ..., "mAP": ..., "trained": bool}
MetricTable = dict[str, dict[str, float | bool]]


def _check_embeddings(query: Tensor, gallery: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Validates (N, D) query and (M, D) gallery; returns them detached, as float32."""
    if query.ndim != 2 or gallery.ndim != 2:
        raise ValueError(
            f"query must be (N, D) and gallery (M, D), got {tuple(query.shape)} and {tuple(gallery.shape)}"
        )
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f"embedding dims differ: query D={query.shape[1]}, gallery D={gallery.shape[1]}")
    if query.device != gallery.device:
        raise ValueError(f"query is on {query.device} but gallery is on {gallery.device}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    query, gallery = query.detach().float(), gallery.detach().float()
    # NaN compares False with everything, so it would silently score rank 0.
    if not (torch.isfinite(query).all() and torch.isfinite(gallery).all()):
        raise ValueError("query or gallery contains NaN or inf")
    return query, gallery


def _check_keys(keys: Tensor, num_rows: int, name: str, device: torch.device) -> Tensor:
    if keys.shape != (num_rows,):
        raise ValueError(f"{name} must have shape ({num_rows},), one per row, got {tuple(keys.shape)}")
    return keys.to(device)


def _first_relevant_rank(scores: Tensor, relevant: Tensor) -> Tensor:
    """(c, M) scores and relevance -> (c,) 0-based rank of the best relevant item."""
    best_relevant = scores.masked_fill(~relevant, -math.inf).amax(dim=1, keepdim=True)  # (c, 1)
    return (scores > best_relevant).sum(dim=1)


def _average_precision_block(scores: Tensor, relevant: Tensor, ranks: Tensor) -> Tensor:
    """(c, M) scores and relevance, (c,) ranks -> (c,) average precision in [0, 1]."""
    if bool((relevant.sum(dim=1) == 1).all()):
        # The usual instance-level case: one match, so AP = 1/(rank+1) and no sort is needed.
        return 1.0 / (ranks.float() + 1.0)
    # Ordering by relevance, then stably by score, puts relevant items ahead of equal scores:
    # the same optimistic tie rule as _first_relevant_rank.
    by_relevance = torch.argsort(relevant.to(torch.uint8), dim=1, descending=True, stable=True)
    scores, relevant = scores.gather(1, by_relevance), relevant.gather(1, by_relevance)
    by_score = torch.argsort(scores, dim=1, descending=True, stable=True)
    hits = relevant.gather(1, by_score).float()  # (c, M), 1.0 where the ranked item is relevant
    positions = torch.arange(1, hits.shape[1] + 1, device=hits.device, dtype=torch.float32)
    precision = hits.cumsum(dim=1) / positions  # (c, M) precision at every cut-off
    return (precision * hits).sum(dim=1) / hits.sum(dim=1)


@torch.no_grad()
def _ranks_and_ap(
    query: Tensor,
    gallery: Tensor,
    query_keys: Tensor,
    gallery_keys: Tensor,
    chunk_size: int,
    with_ap: bool,
) -> tuple[Tensor, Tensor]:
    """The shared chunk loop: (N,) ranks and (N,) AP (AP empty unless with_ap)."""
    query, gallery = _check_embeddings(query, gallery, chunk_size)
    query_keys = _check_keys(query_keys, len(query), "query_keys", query.device)
    gallery_keys = _check_keys(gallery_keys, len(gallery), "gallery_keys", query.device)
    missing = (~torch.isin(query_keys, gallery_keys)).nonzero().flatten()
    if len(missing) > 0:
        raise ValueError(
            f"{len(missing)} of {len(query)} queries have no relevant gallery item (no equal key), "
            f"e.g. query rows {missing[:5].tolist()}; their rank and AP are undefined"
        )
    ranks, aps = [query.new_empty(0, dtype=torch.long)], [query.new_empty(0)]
    for start in range(0, len(query), chunk_size):
        scores = query[start : start + chunk_size] @ gallery.T  # (c, M)
        relevant = query_keys[start : start + chunk_size, None] == gallery_keys[None, :]  # (c, M)
        ranks.append(_first_relevant_rank(scores, relevant))
        if with_ap:
            aps.append(_average_precision_block(scores, relevant, ranks[-1]))
    return torch.cat(ranks), torch.cat(aps)


def rank_of_matches(
    query: Tensor, gallery: Tensor, query_keys: Tensor, gallery_keys: Tensor, chunk_size: int = 4096
) -> Tensor:
    """For every query, where its first relevant gallery item lands in the ranking.

    Args:
        query: (N, D) unit-norm query embeddings.
        gallery: (M, D) unit-norm gallery embeddings.
        query_keys: (N,) key per query; gallery items with an equal key are relevant.
        gallery_keys: (M,) key per gallery item.
        chunk_size: queries scored at once; peak memory is about chunk_size * M * 10 bytes.

    Returns:
        (N,) int64 0-based ranks: how many gallery items score strictly higher than the query's
        best relevant item (ties count in the query's favour).

    Raises:
        ValueError: on mismatched shapes, non-finite values, or a query with no relevant item.
    """
    return _ranks_and_ap(query, gallery, query_keys, gallery_keys, chunk_size, with_ap=False)[0]


def average_precision(
    query: Tensor, gallery: Tensor, query_keys: Tensor, gallery_keys: Tensor, chunk_size: int = 4096
) -> Tensor:
    """Per-query average precision over all relevant gallery items (mAP is its mean).

    Args and Raises are as in `rank_of_matches`. When a query has several relevant items its
    block is sorted, which peaks at about chunk_size * M * 30 bytes: lower chunk_size for big
    class-level galleries.

    Returns:
        (N,) float32 AP in [0, 1], relevant items ranked ahead of equal scores.
    """
    return _ranks_and_ap(query, gallery, query_keys, gallery_keys, chunk_size, with_ap=True)[1]


def recall_at_k(ranks: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Percentage of queries whose first relevant item is in the top k.

    Args:
        ranks: (N,) 0-based ranks from `rank_of_matches`.
        ks: cut-offs, each >= 1.

    Returns:
        {"R@k": percent} for every k, in the order given.
    """
    if ranks.ndim != 1 or len(ranks) == 0:
        raise ValueError(f"ranks must be a non-empty (N,) tensor, got shape {tuple(ranks.shape)}")
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be non-empty positive ints, got {ks!r}")
    # Integer counts keep R@k exact (2.585, not 2.5849999...).
    return {f"R@{k}": 100.0 * int((ranks < k).sum()) / len(ranks) for k in ks}


def _median_rank(ranks: Tensor) -> float:
    """1-based median rank; for even N the mean of the middle two, as numpy.median does."""
    ordered = (ranks + 1).float().sort().values
    n = len(ordered)
    return ((ordered[(n - 1) // 2] + ordered[n // 2]) / 2).item()


def retrieval_metrics(
    query: Tensor,
    gallery: Tensor,
    query_keys: Tensor,
    gallery_keys: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 4096,
) -> dict[str, float]:
    """Recall@k, median rank and mAP of one query set against one gallery.

    Args:
        query, gallery, query_keys, gallery_keys, chunk_size: as in `rank_of_matches`.
        ks: recall cut-offs.

    Returns:
        {"R@1": %, "R@5": %, "R@10": %, "median_rank": 1-based, "mAP": %}.
    """
    ranks, ap = _ranks_and_ap(query, gallery, query_keys, gallery_keys, chunk_size, with_ap=True)
    if len(ranks) == 0:
        raise ValueError("need at least one query")
    mean_ap = 100.0 * ap.double().mean().item()
    return {**recall_at_k(ranks, ks), "median_rank": _median_rank(ranks), "mAP": mean_ap}


def _topk_over_gallery(q: Tensor, gallery: Tensor, k: int, chunk_size: int) -> tuple[Tensor, Tensor]:
    """(c, D) queries -> (c, k) scores and indices over all gallery blocks, with a threshold pre-filter.

    The first block gives an exact top-k. For every later block only the scores above each query's
    current k-th best can enter its top-k; after a few blocks those are a handful per query, so the
    expensive part is one comparison pass over the block instead of a top-k over it (a top-k over a
    4096-wide row costs about as much as the matmul that produced it on a CPU). Candidates are merged
    into the running top-k per query with one small padded top-k.
    """
    c = len(q)
    first = min(chunk_size, len(gallery))
    block = q @ gallery[:first].T
    best_scores, best_indices = block.topk(min(k, first), dim=1)
    buffer = q.new_empty(c, chunk_size)
    for start in range(first, len(gallery), chunk_size):
        g = gallery[start : start + chunk_size]
        # (c, g) scores into one reused buffer (the last, shorter block gets its own)
        block = torch.mm(q, g.T, out=buffer) if len(g) == chunk_size else q @ g.T
        if best_scores.shape[1] < k:  # gallery smaller than k so far: exact merge
            merged = torch.cat([best_scores, block], dim=1)
            merged_idx = torch.cat(
                [best_indices, torch.arange(start, start + len(g), device=q.device).expand(c, -1)], 1
            )
            best_scores, picked = merged.topk(min(k, merged.shape[1]), dim=1)
            best_indices = merged_idx.gather(1, picked)
            continue
        rows, cols = (block > best_scores[:, -1:]).nonzero(as_tuple=True)
        if len(rows) == 0:
            continue
        # Pad each query's candidates to the largest count and merge with its running top-k.
        counts = torch.bincount(rows, minlength=c)
        width = int(counts.max())
        slot = torch.arange(len(rows), device=q.device) - (torch.cumsum(counts, 0) - counts)[rows]
        cand_scores = q.new_full((c, width), float("-inf"))
        cand_idx = torch.zeros(c, width, dtype=torch.long, device=q.device)
        cand_scores[rows, slot] = block[rows, cols]
        cand_idx[rows, slot] = cols + start
        merged = torch.cat([best_scores, cand_scores], dim=1)
        best_scores, picked = merged.topk(k, dim=1)
        best_indices = torch.cat([best_indices, cand_idx], dim=1).gather(1, picked)
    return best_scores, best_indices


@torch.no_grad()
def topk_chunked(query: Tensor, gallery: Tensor, k: int, chunk_size: int = 4096) -> tuple[Tensor, Tensor]:
    """Top-k gallery items per query without building the N x M similarity matrix.

    Both queries and gallery are cut into blocks of chunk_size and a running top-k is merged over
    the gallery blocks, scoring each block into one reused buffer and letting through only scores
    above a query's current k-th best, so memory is O(chunk_size * (chunk_size + k)) and the time is
    close to that of the matmuls: a 100k x 100k search at D=512 needs a few hundred MB beyond the
    embeddings. The result is `torch.topk(query @
    gallery.T, k)` up to float32 rounding (BLAS may round a dot product by ~1 ulp differently in a
    smaller block); as in torch.topk, the order of tied items is unspecified.

    Args:
        query: (N, D) query embeddings.
        gallery: (M, D) gallery embeddings.
        k: items to keep, 1 <= k <= M.
        chunk_size: rows per query block and per gallery block.

    Returns:
        (scores, indices), both (N, k): scores descending, indices into the gallery.
    """
    query, gallery = _check_embeddings(query, gallery, chunk_size)
    if not isinstance(k, int) or not 1 <= k <= len(gallery):
        raise ValueError(f"k must be an int in [1, {len(gallery)}] (the gallery size), got {k!r}")
    if len(query) == 0:
        return query.new_empty(0, k), torch.empty(0, k, dtype=torch.long, device=query.device)
    blocks = [
        _topk_over_gallery(query[start : start + chunk_size], gallery, k, chunk_size)
        for start in range(0, len(query), chunk_size)
    ]
    return torch.cat([s for s, _ in blocks]), torch.cat([i for _, i in blocks])


def _as_edges(
    trained_pairs: Iterable[tuple[str, str]] | set[frozenset[str]],
) -> set[frozenset[str]]:
    edges = set()
    for pair in trained_pairs:
        edge = frozenset() if isinstance(pair, str) else frozenset(pair)  # not a set of letters
        if len(edge) != 2:
            raise ValueError(f"trained pair {pair!r} must name two different modalities")
        edges.add(edge)
    return edges


def retrieval_matrix(
    embeddings: dict[str, Tensor],
    keys: Tensor,
    trained_pairs: Iterable[tuple[str, str]] | set[frozenset[str]],
    class_labels: Tensor | None = None,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 4096,
) -> tuple[MetricTable, MetricTable | None]:
    """Retrieval metrics for every ordered pair of modalities, flagged trained or emergent.

    Args:
        embeddings: modality -> (N, D) unit-norm embeddings; row i of every modality is sample i.
        keys: (N,) sample ids; instance-level relevance is "same id".
        trained_pairs: unordered edges trained together, as (a, b) tuples or frozensets. Names
            missing from `embeddings` are allowed and never match.
        class_labels: optional (N,) labels for class-level relevance ("same label"; the query's
            own sample counts as relevant too).
        ks: recall cut-offs.
        chunk_size: queries scored at once; see `average_precision` for memory.

    Returns:
        (instance, class_level): each maps "<q>-><g>", for every ordered pair of distinct
        modalities, to `retrieval_metrics` plus "trained" (is {q, g} a trained edge). class_level
        is None without class_labels.
    """
    edges = _as_edges(trained_pairs)
    if len(embeddings) < 2:
        raise ValueError(f"need at least two modalities, got {list(embeddings)}")
    for name, emb in embeddings.items():
        if "->" in name:
            raise ValueError(f"modality name {name!r} must not contain '->' (used in pair names)")
        if emb.shape[:1] != keys.shape or emb.ndim != 2:
            raise ValueError(
                f"embeddings[{name!r}] must be (N, D) with N = len(keys) = {len(keys)}, got {tuple(emb.shape)}"
            )
    dims = {name: emb.shape[1] for name, emb in embeddings.items()}
    if len(set(dims.values())) > 1:
        raise ValueError(f"all modalities must share one embedding dim, got {dims}")
    if class_labels is not None and class_labels.shape != keys.shape:
        raise ValueError(f"class_labels must match keys {tuple(keys.shape)}, got {tuple(class_labels.shape)}")

    def one_level(relevance: Tensor) -> MetricTable:
        table: MetricTable = {}
        for q, g in itertools.permutations(embeddings, 2):
            metrics = retrieval_metrics(embeddings[q], embeddings[g], relevance, relevance, ks, chunk_size)
            table[f"{q}->{g}"] = {**metrics, "trained": frozenset((q, g)) in edges}
        return table

    return one_level(keys), None if class_labels is None else one_level(class_labels)
