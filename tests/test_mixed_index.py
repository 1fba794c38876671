"""The mixed index is tie-aware: equal to the average over every ordering of tied items, chance when collapsed."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from bindspace.evaluation.gap import mixed_index as reexported
from bindspace.evaluation.mixed import mixed_index


def brute_force(queries, query_keys, galleries, gallery_keys, k, ks):
    """Share and recalls averaged over all M! tie-breaking orders of the gallery (small M only)."""
    names = list(galleries)
    gallery = torch.cat([galleries[m] for m in names])
    owner = [m for m in names for _ in range(len(galleries[m]))]
    keys = torch.cat([gallery_keys[m] for m in names]).tolist()
    scores = (queries @ gallery.T).tolist()
    orders = list(itertools.permutations(range(len(gallery))))
    share = dict.fromkeys(names, 0.0)
    hits = {f"R@{c}": 0.0 for c in ks}
    per = {m: {f"R@{c}": 0.0 for c in ks} for m in names}
    for qi, row in enumerate(scores):
        for order in orders:
            ranked = sorted(range(len(gallery)), key=lambda j: (-row[j], order[j]))
            for j in ranked[:k]:
                share[owner[j]] += 1
            for c in ks:
                top = ranked[:c]
                hits[f"R@{c}"] += any(keys[j] == query_keys[qi] for j in top)
                for m in names:
                    per[m][f"R@{c}"] += any(keys[j] == query_keys[qi] and owner[j] == m for j in top)
    runs = len(scores) * len(orders)
    return (
        {m: 100 * v / (runs * k) for m, v in share.items()},
        {c: 100 * v / runs for c, v in hits.items()},
        {m: {c: 100 * v / runs for c, v in d.items()} for m, d in per.items()},
    )


def axis(i: int, d: int = 4) -> torch.Tensor:
    return F.one_hot(torch.tensor(i), d).float()


def test_ties_are_scored_as_the_average_over_every_ordering():
    # Two queries; the gallery repeats vectors across modalities so scores tie within and across them.
    queries = torch.stack([axis(0), F.normalize(axis(0) + axis(1), dim=0)])
    image = torch.stack([axis(0), axis(1), axis(2)])
    audio = torch.stack([axis(0), axis(1), axis(3)])
    qk, ik, ak = torch.tensor([0, 1]), torch.tensor([0, 1, 2]), torch.tensor([1, 0, 2])
    galleries, keys = {"image": image, "audio": audio}, {"image": ik, "audio": ak}
    ks = (1, 2, 3)
    share, hits, per = brute_force(queries, qk, galleries, keys, k=2, ks=ks)
    out = mixed_index(queries, qk, galleries, keys, k=2, ks=ks)
    for m in share:
        assert out["share"][m] == pytest.approx(share[m], abs=1e-9)
        for c in per[m]:
            assert out["per_modality"][m][c] == pytest.approx(per[m][c], abs=1e-9), (m, c)
    for c in hits:
        assert out[c] == pytest.approx(hits[c], abs=1e-9), c
    assert out["ties"] == "expected"


def test_a_collapsed_model_scores_chance():
    n = 20
    same = F.normalize(torch.ones(1, 8), dim=1)
    keys = torch.arange(n)
    galleries = {"image": same.repeat(n, 1), "audio": same.repeat(2 * n, 1)}
    gkeys = {"image": keys, "audio": torch.cat([keys, keys + n])}
    out = mixed_index(same.repeat(n, 1), keys, galleries, gkeys, k=10, ks=(1, 10))
    assert out["share"] == pytest.approx(out["expected_share"])  # 1/3 image, 2/3 audio
    m = 3 * n  # every query has 2 matches (one image, one audio) among 60 tied items
    assert out["R@1"] == pytest.approx(100 * 2 / m)
    assert out["R@10"] == pytest.approx(100 * (1 - math.comb(m - 2, 10) / math.comb(m, 10)))
    assert out["per_modality"]["image"]["R@10"] == pytest.approx(100 * 10 / m)
    # Chance is printed beside the recalls (a random ranking of this index), and a collapsed model scores it.
    assert out["chance"] == pytest.approx({c: out[c] for c in ("R@1", "R@10")})
    for g in galleries:
        assert out["per_modality_chance"][g] == pytest.approx({c: out["per_modality"][g][c] for c in ("R@1", "R@10")})


def test_distinct_scores_keep_the_exact_counts_and_the_gap_module_reexports():
    assert reexported is mixed_index
    queries = torch.stack([axis(0), axis(1)])
    image, audio = torch.stack([axis(0), axis(1)]), torch.stack([0.9 * axis(0) + 0.1 * axis(2)] * 2)
    keys = torch.tensor([0, 1])
    out = mixed_index(queries, keys, {"image": image, "audio": F.normalize(audio)}, {"image": keys, "audio": keys}, 1)
    assert out["share"] == {"image": 100.0, "audio": 0.0} and out["R@1"] == 100.0
