"""Exact top-k over a gallery without the N x M similarity matrix (search and the mixed index)."""

import torch
from torch import Tensor


def check_embeddings(query: Tensor, gallery: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
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
    query, gallery = check_embeddings(query, gallery, chunk_size)
    if not isinstance(k, int) or not 1 <= k <= len(gallery):
        raise ValueError(f"k must be an int in [1, {len(gallery)}] (the gallery size), got {k!r}")
    if len(query) == 0:
        return query.new_empty(0, k), torch.empty(0, k, dtype=torch.long, device=query.device)
    blocks = [
        _topk_over_gallery(query[start : start + chunk_size], gallery, k, chunk_size)
        for start in range(0, len(query), chunk_size)
    ]
    return torch.cat([s for s, _ in blocks]), torch.cat([i for _, i in blocks])
