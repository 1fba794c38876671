"""Queries against one index holding several modalities: who fills the top k, and is the match found.

Ties are scored by their expected value over every ordering of the tied items (McSherry and Najork,
ECIR 2008), the rule of every bindspace metric (:mod:`bindspace.evaluation.ties`), so a collapsed
model (all scores equal) gets chance:

- recalls are those of :mod:`bindspace.evaluation.ranking` (``scan`` + ``recall_at_k``) over the
  concatenated index;
- the top k of a query is every item scoring above its k-th best score ``t``, plus ``r`` of the ``B``
  items scoring exactly ``t`` drawn at random: modality ``m`` fills, in expectation,
  ``above_m + r * at_m / B`` slots.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from bindspace.evaluation.ranking import chance_levels, check_ks, recall_at_k, scan
from bindspace.evaluation.ties import exact_scores
from bindspace.evaluation.topk import check_embeddings


def _expected_slots(scores: Tensor, owner_onehot: Tensor, k: int) -> Tensor:
    """(c, M) scores, (M, n_mod) owner one-hot -> (c, n_mod) expected top-k slots per modality."""
    kth = scores.topk(k, dim=1).values[:, -1:]  # (c, 1)
    above = (scores > kth).double() @ owner_onehot  # (c, n_mod)
    at = (scores == kth).double() @ owner_onehot
    open_slots = k - above.sum(1, keepdim=True)
    return above + open_slots * at / at.sum(1, keepdim=True)


@torch.no_grad()
def _top_k_shares(queries: Tensor, gallery: Tensor, owner: Tensor, n_modalities: int, k: int, chunk_size: int):
    """(n_mod,) float64 expected top-k slots per modality, summed over queries."""
    onehot = torch.nn.functional.one_hot(owner, n_modalities).double()
    slots = torch.zeros(n_modalities, dtype=torch.float64)
    for start in range(0, len(queries), chunk_size):
        scores = exact_scores(queries[start : start + chunk_size], gallery)  # (c, M), BLAS-independent ties
        slots += _expected_slots(scores, onehot, k).sum(0)
    return slots


def _dense_keys(query_keys: Tensor, gallery_keys: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Keys -> dense non-negative ints, so -1 is free to mean "never relevant"."""
    names = list(gallery_keys)
    flat = torch.cat([query_keys.cpu(), *(gallery_keys[m].cpu() for m in names)])
    _, dense = torch.unique(flat, return_inverse=True)
    parts = dense.split([len(query_keys), *(len(gallery_keys[m]) for m in names)])
    return parts[0], dict(zip(names, parts[1:], strict=True))


def mixed_index(
    queries: Tensor,
    query_keys: Tensor,
    galleries: Mapping[str, Tensor],
    gallery_keys: Mapping[str, Tensor],
    k: int = 10,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict:
    """Queries against one index of several modalities, tie-aware (see the module docstring).

    Args:
        queries: (N, D) unit-norm query embeddings.
        query_keys: (N,) key per query; gallery items with an equal key are its matches.
        galleries: modality -> (M_m, D) embeddings, searched together as one index.
        gallery_keys: modality -> (M_m,) keys.
        k: depth of the top-k whose modality shares are reported.
        ks: recall cut-offs.
        chunk_size: queries scored at once.

    Returns:
        {"k", "share": {m: expected % of top-k slots filled by m}, "expected_share": {m: % of the index
        that is m}, "R@k": expected % of queries with a match in the top k, "chance": {"R@k": what a random
        ranking of this index scores}, "per_modality": {m: {"R@k": expected % with m's match in the top k of
        the mixed index}}, "per_modality_chance": {m: {"R@k": a random ranking's}}, "ties": "expected"}.
        A modality with no match for some query is left out of per_modality and per_modality_chance.
    """
    names = list(galleries)
    if not names or set(names) != set(gallery_keys):
        raise ValueError(f"galleries {names} and gallery_keys {list(gallery_keys)} must name the same modalities")
    check_ks([k, *ks])
    parts = [check_embeddings(queries.cpu(), galleries[m].cpu(), chunk_size)[1] for m in names]
    queries, gallery = check_embeddings(queries.cpu(), torch.cat(parts), chunk_size)
    owner = torch.cat([torch.full((len(p),), i) for i, p in enumerate(parts)])
    qk, gk = _dense_keys(query_keys, gallery_keys)
    # Relevance per target: any modality's match, then each modality's alone (-1 never matches).
    targets = {"any": torch.cat([gk[m] for m in names])}
    for m in names:
        if bool(torch.isin(qk, gk[m]).all()):
            targets[m] = torch.cat([gk[n] if n == m else torch.full_like(gk[n], -1) for n in names])
    found = scan(queries, gallery, [(qk, keys) for keys in targets.values()], chunk_size, with_ap=False)
    recall = {t: recall_at_k(ranks, ks) for t, (ranks, _) in zip(targets, found, strict=True)}
    chance = {t: chance_levels(qk, keys, ks) for t, keys in targets.items()}  # a random ranking of this index
    chance = {t: {f"R@{k}": c[f"R@{k}"] for k in ks} for t, c in chance.items()}
    top = min(k, len(gallery))
    slots = _top_k_shares(queries, gallery, owner, len(names), top, chunk_size)
    return {
        "k": k,
        "share": {m: 100.0 * float(slots[i]) / (top * len(queries)) for i, m in enumerate(names)},
        "expected_share": {m: 100.0 * len(p) / len(gallery) for m, p in zip(names, parts, strict=True)},
        **recall["any"],
        "chance": chance["any"],
        "per_modality": {m: recall[m] for m in names if m in recall},
        "per_modality_chance": {m: chance[m] for m in names if m in chance},
        "ties": "expected",
    }
