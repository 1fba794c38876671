"""Rank statistics that do not depend on how a sort breaks ties (McSherry & Najork, ECIR 2008).

One rule everywhere in bindspace: a metric is its **expected value over all orderings of tied items**,
every ordering equally likely (a random tie-break, averaged). Everything follows from counts, per
query and per relevant item: ``higher`` (gallery items scoring strictly above it), ``tied`` (items with
exactly its score, itself included) and ``relevant_tied`` (relevant items among those tied). So a
collapsed model (every score equal) scores exactly chance, duplicated gallery items score what a coin
flip among them gives on average, and without ties every value is the usual one.

Scores are compared as float32, but computed by :func:`exact_scores` so that they do not depend on how
BLAS blocks a matmul: two identical vectors always score the same against a query.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor


def exact_scores(query: Tensor, gallery: Tensor) -> Tensor:
    """(n, D) x (m, D) -> (n, m) float32 dot products, independent of the matmul's blocking.

    A float32 matmul may round a dot product differently in different kernels (a one-row block runs as
    a matrix-vector product), so identical gallery items can differ by an ulp and a tie turns into a
    ranking decided by the BLAS. Products of float32 values are exact in float64 and the float64 sum is
    ~1e-13 from the true value, so rounding it to float32 gives the same score on every code path.
    """
    return (query.double() @ gallery.double().T).float()


@lru_cache(maxsize=8)
def _harmonic_cpu(m: int) -> Tensor:
    h = torch.zeros(m + 1, dtype=torch.float64)
    h[1:] = (1.0 / torch.arange(1, m + 1, dtype=torch.float64)).cumsum(0)
    return h


def harmonic(m: int, device: torch.device | str = "cpu") -> Tensor:
    """(m + 1,) float64 harmonic numbers H(0) = 0, H(1) = 1, ..., H(m)."""
    return _harmonic_cpu(int(m)).to(device)


@dataclass(frozen=True)
class Ranks:
    """Where each query's first relevant gallery item lands, as counts that include ties.

    All fields are (N,) int64 and describe the highest-scoring group of tied items that holds a
    relevant item: ``higher`` items score strictly above it, it has ``tied`` items, ``relevant_tied``
    of them relevant. Without ties (tied == relevant_tied == 1) ``higher`` is the usual 0-based rank.
    """

    higher: Tensor
    tied: Tensor
    relevant_tied: Tensor

    def __len__(self) -> int:
        return len(self.higher)

    @property
    def expected(self) -> Tensor:
        """(N,) float64 expected 0-based rank of the first relevant item over random tie orders.

        Among t tied items with r relevant, (t - r) / (r + 1) irrelevant ones come first on average.
        """
        return self.higher.double() + (self.tied - self.relevant_tied).double() / (self.relevant_tied + 1).double()

    def hit_probability(self, k: int) -> Tensor:
        """(N,) float64 probability that a relevant item is among the top k (the expected R@k per query).

        With x = k - higher places left for the tied group, the top k misses every relevant item with
        probability C(t - r, x) / C(t, x) = prod_{i < x} (t - r - i) / (t - i).
        """
        x = k - self.higher
        t, r = self.tied.double(), self.relevant_tied.double()
        miss = torch.ones_like(t)
        # x > t - r leaves no way to miss; the clamps keep those rows at 0 instead of 0/0.
        for i in range(int(x.clamp(max=k).max().clamp(min=0)) if len(x) else 0):
            factor = (t - r - i).clamp(min=0) / (t - i).clamp(min=1)
            miss = torch.where(x > i, miss * factor, miss)
        # One relevant item: the product telescopes to (t - x) / t; x / t directly is exact (100 k / M at chance).
        single = (x.double() / t).clamp(0.0, 1.0)
        return torch.where(r == 1, single, torch.where(x <= 0, torch.zeros_like(miss), 1.0 - miss))

    def to(self, device: torch.device | str) -> Ranks:
        return Ranks(self.higher.to(device), self.tied.to(device), self.relevant_tied.to(device))

    @staticmethod
    def cat(parts: list[Ranks]) -> Ranks:
        return Ranks(*(torch.cat([getattr(p, f) for p in parts]) for f in ("higher", "tied", "relevant_tied")))


def expected_ap_terms(higher: Tensor, tied: Tensor, relevant_above: Tensor, relevant_tied: Tensor) -> Tensor:
    """Expected precision-at-own-position of one relevant item, averaged over random tie orders.

    For a relevant item whose tie group spans 1-based positions h+1 .. h+t and holds r relevant items,
    with R_b relevant items above the group, each position h+j is relevant with probability r/t, and
    then the group holds 1 + (j-1)(r-1)/(t-1) relevant items up to it on average (McSherry & Najork).
    The group's expected contribution to the sum of precisions, split evenly over its r relevant items:
    (1/t) * [(R_b + 1) * dH + (r - 1)/(t - 1) * (t - (h + 1) * dH)], dH = H(h + t) - H(h),
    using sum_j 1/(h+j) = dH and sum_j (j-1)/(h+j) = t - (h+1) dH. AP is the sum over relevant items
    divided by their number. Untied items get exactly (R_b + 1) / (h + 1).

    Args:
        higher, tied, relevant_above, relevant_tied: equal-shape int64 counts per relevant item.

    Returns:
        float64 terms of the same shape.
    """
    h, t, rb, r = higher.double(), tied.double(), relevant_above.double(), relevant_tied.double()
    table = harmonic(int(higher.max() + tied.max()) if higher.numel() else 0, higher.device)
    d_h = table[higher + tied] - table[higher]
    spread = torch.where(t > 1, (r - 1) / (t - 1).clamp(min=1), torch.zeros_like(t))
    tied_term = ((rb + 1) * d_h + spread * (t - (h + 1) * d_h)) / t
    return torch.where(tied == 1, (rb + 1) / (h + 1), tied_term)


def chance_ranks(relevant_counts: Tensor, gallery_size: int) -> Ranks:
    """The ranks of a random ranking: every gallery item tied, ``relevant_counts[i]`` of them relevant."""
    counts = relevant_counts.long()
    return Ranks(torch.zeros_like(counts), torch.full_like(counts, gallery_size), counts)


def chance_ap(relevant_counts: Tensor, gallery_size: int) -> Tensor:
    """(N,) float64 expected AP of a random ranking of ``gallery_size`` items with r relevant: the
    single-group case of :func:`expected_ap_terms`; H(M)/M with one relevant item."""
    m = gallery_size
    r = relevant_counts.double()
    h_m = float(harmonic(m)[m])
    spread = (r - 1) / (m - 1) if m > 1 else torch.zeros_like(r)
    return (h_m + spread * (m - h_m)) / m
