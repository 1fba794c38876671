"""Retrieval metrics against a brute-force reference and hand-built cases with known answers."""

import itertools
import logging
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bindspace.evaluation.retrieval import (
    average_precision,
    chance_levels,
    evaluate_retrieval,
    rank_of_matches,
    recall_at_k,
    retrieval_matrix,
    retrieval_metrics,
    retrieval_per_query,
    topk_chunked,
)
from bindspace.evaluation.tables import format_metrics_report, format_retrieval_table, format_summary, summarize


def unit(*shape: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator), dim=-1)


def reference_ranks_and_ap(query, gallery, query_keys, gallery_keys) -> tuple[list[int], list[float]]:
    """Full similarity matrix, argsort, walk down each ranking. Assumes no tied scores."""
    sims = query @ gallery.T
    ranks, aps = [], []
    for i in range(len(query)):
        order = torch.argsort(sims[i], descending=True)
        relevant = (gallery_keys[order] == query_keys[i]).tolist()
        ranks.append(relevant.index(True))
        hits, precisions = 0, []
        for position, is_relevant in enumerate(relevant, start=1):
            if is_relevant:
                hits += 1
                precisions.append(hits / position)
        aps.append(sum(precisions) / len(precisions))
    return ranks, aps


def ranked_gallery(relevance_in_rank_order: list[list[bool]]) -> tuple[torch.Tensor, ...]:
    """Queries whose ranking of a one-hot gallery is known exactly.

    Gallery item j is the basis vector e_j, so a query scores item j with its own weight j. Query i
    owns items i*m .. i*m+m-1 and gives the item meant for 0-based position p the weight m - p; all
    other items score 0, below every owned item. Relevant items get key i, the rest -1.
    """
    num_queries, m = len(relevance_in_rank_order), len(relevance_in_rank_order[0])
    query_keys = torch.arange(num_queries)
    gallery = torch.eye(num_queries * m)
    query = torch.zeros(num_queries, num_queries * m)
    gallery_keys = torch.full((num_queries * m,), -1)
    for i, relevance in enumerate(relevance_in_rank_order):
        for position, is_relevant in enumerate(relevance):
            item = i * m + position
            query[i, item] = float(m - position)
            if is_relevant:
                gallery_keys[item] = i
    return F.normalize(query, dim=1), gallery, query_keys, gallery_keys


def random_case(n: int, m: int, d: int, num_keys: int, seed: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    gallery_keys = torch.randint(num_keys, (m,), generator=generator)
    # Query keys are drawn from the gallery's, so every query has a match.
    query_keys = gallery_keys[torch.randint(m, (n,), generator=generator)]
    return unit(n, d, seed=seed), unit(m, d, seed=seed + 1), query_keys, gallery_keys


@pytest.mark.parametrize(
    ("n", "m", "d", "num_keys", "seed"),
    [(40, 60, 16, 60, 0), (37, 53, 8, 10, 1), (25, 200, 32, 3, 2), (64, 64, 4, 64, 3)],
)
def test_ranks_recall_and_ap_match_brute_force(n, m, d, num_keys, seed):
    query, gallery, query_keys, gallery_keys = random_case(n, m, d, num_keys, seed)
    ref_ranks, ref_aps = reference_ranks_and_ap(query, gallery, query_keys, gallery_keys)
    for chunk_size in (1, 3, 7, n, 4096):
        ranks = rank_of_matches(query, gallery, query_keys, gallery_keys, chunk_size=chunk_size)
        assert ranks.higher.dtype == torch.long
        assert ranks.higher.tolist() == ref_ranks
        assert ranks.expected.tolist() == ref_ranks  # random scores: no ties, so nothing to average
        aps = average_precision(query, gallery, query_keys, gallery_keys, chunk_size=chunk_size)
        torch.testing.assert_close(aps, torch.tensor(ref_aps), atol=1e-6, rtol=0)
    # Without ties the tie-aware numbers are exactly the untied ones (integer counts, not approximations).
    for recalls in (recall_at_k(ranks, ks=(1, 5, 10)), recall_at_k(torch.tensor(ref_ranks), ks=(1, 5, 10))):
        assert recalls == {f"R@{k}": 100.0 * sum(r < k for r in ref_ranks) / n for k in (1, 5, 10)}


def test_chunked_equals_unchunked_for_sizes_that_do_not_divide():
    query, gallery, query_keys, gallery_keys = random_case(101, 97, 12, 7, seed=5)
    full = retrieval_metrics(query, gallery, query_keys, gallery_keys, chunk_size=10_000)
    full_ranks = rank_of_matches(query, gallery, query_keys, gallery_keys, chunk_size=10_000)
    for chunk_size in (1, 6, 13, 50, 100, 102):
        ranks = rank_of_matches(query, gallery, query_keys, gallery_keys, chunk_size=chunk_size)
        assert torch.equal(ranks.higher, full_ranks.higher), chunk_size
        assert torch.equal(ranks.tied, full_ranks.tied) and torch.equal(ranks.relevant_tied, full_ranks.relevant_tied)
        chunked = retrieval_metrics(query, gallery, query_keys, gallery_keys, chunk_size=chunk_size)
        assert chunked == pytest.approx(full, abs=1e-4), chunk_size


def test_known_ranks_give_exact_recall_median_and_map():
    # First (and only) relevant item at rank 0, 3 and 7.
    patterns = [[position == rank for position in range(12)] for rank in (0, 3, 7)]
    query, gallery, query_keys, gallery_keys = ranked_gallery(patterns)
    assert rank_of_matches(query, gallery, query_keys, gallery_keys).higher.tolist() == [0, 3, 7]
    metrics = retrieval_metrics(query, gallery, query_keys, gallery_keys, chunk_size=2)
    assert metrics["R@1"] == pytest.approx(100 / 3)
    assert metrics["R@5"] == pytest.approx(200 / 3)
    assert metrics["R@10"] == pytest.approx(100.0)
    assert metrics["median_rank"] == 4.0  # 1-based ranks 1, 4, 8
    assert metrics["mAP"] == pytest.approx(100 * (1 + 1 / 4 + 1 / 8) / 3)


def test_average_precision_by_hand_with_several_relevant_items():
    # Relevant at 1-based positions 1, 3, 6: AP = (1/1 + 2/3 + 3/6) / 3.
    # Second query: relevant at 2 and 4: AP = (1/2 + 2/4) / 2.
    patterns = [
        [True, False, True, False, False, True],
        [False, True, False, True, False, False],
    ]
    query, gallery, query_keys, gallery_keys = ranked_gallery(patterns)
    aps = average_precision(query, gallery, query_keys, gallery_keys, chunk_size=1)
    torch.testing.assert_close(aps, torch.tensor([(1 + 2 / 3 + 3 / 6) / 3, 0.5]))
    assert rank_of_matches(query, gallery, query_keys, gallery_keys).higher.tolist() == [0, 1]


def test_ties_count_their_expected_value_over_random_orders():
    # Integer vectors make the scores exact: the relevant item (key 7) ties with two others at 1, and
    # one item scores 2 strictly above them, so its 0-based rank is 1, 2 or 3 with equal chance.
    query = torch.tensor([[1.0, 0.0]])
    gallery = torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    gallery_keys = torch.tensor([0, 1, 2, 7, 3])
    ranks = rank_of_matches(query, gallery, torch.tensor([7]), gallery_keys)
    assert (ranks.higher.item(), ranks.tied.item(), ranks.relevant_tied.item()) == (1, 3, 1)
    assert ranks.expected.item() == 2.0
    assert recall_at_k(ranks, ks=(1, 2, 3, 4)) == pytest.approx(
        {"R@1": 0.0, "R@2": 100 / 3, "R@3": 200 / 3, "R@4": 100}
    )
    ap = average_precision(query, gallery, torch.tensor([7]), gallery_keys)
    torch.testing.assert_close(ap, torch.tensor([(1 / 2 + 1 / 3 + 1 / 4) / 3]))
    # Two relevant items tied with an irrelevant one at positions 2-4: the orders RRI, RIR, IRR give
    # AP 7/12, 1/2 and 5/12, so 1/2 on average (the optimistic rule said 7/12).
    gallery_keys = torch.tensor([0, 1, 7, 7, 3])
    ap = average_precision(query, gallery, torch.tensor([7]), gallery_keys)
    torch.testing.assert_close(ap, torch.tensor([0.5]))
    ranks = rank_of_matches(query, gallery, torch.tensor([7]), gallery_keys)
    assert ranks.expected.item() == pytest.approx(1 + 1 / 3)  # (t - r) / (r + 1) irrelevant first


def brute_force_expectations(scores: list[float], relevant: list[bool], ks) -> dict[str, float]:
    """Every ordering of the gallery consistent with the scores, equally likely: the mean R@k, AP, rank."""
    totals, count = dict.fromkeys([*(f"R@{k}" for k in ks), "AP", "rank"], 0.0), 0
    for tie_break in itertools.permutations(range(len(scores))):
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], tie_break[i]))
        hits = [relevant[i] for i in order]
        first = hits.index(True)
        for k in ks:
            totals[f"R@{k}"] += first < k
        found, precisions = 0, []
        for position, hit in enumerate(hits, start=1):
            if hit:
                found += 1
                precisions.append(found / position)
        totals["AP"] += sum(precisions) / len(precisions)
        totals["rank"] += first + 1
        count += 1
    return {name: value / count for name, value in totals.items()}


def test_duplicated_gallery_items_score_the_average_of_random_tie_breaks():
    # Seven gallery items with duplicated rows (several captions of one image), exact integer scores;
    # each query is scored against every ordering of the gallery (7! = 5040), tie-breaks uniform.
    gallery = torch.tensor([[2.0, 0], [1, 1], [1, 1], [2, 0], [0, 2], [1, 1], [2, 0]])
    queries = torch.tensor([[1.0, 0], [1, 1], [0, 1], [1, 2]])
    gallery_keys = torch.tensor([0, 1, 1, 2, 3, 1, 2])  # key 1 and 2: duplicates share a key
    cases = [
        (torch.tensor([1, 2, 3, 0]), gallery_keys),  # several relevant items, some tied with others
        (torch.tensor([4, 5, 6, 0]), torch.arange(7)),  # one relevant item each
    ]
    for query_keys, keys in cases:
        per_query = retrieval_per_query(queries, gallery, query_keys, keys, ks=(1, 2, 3, 5), chunk_size=3)
        scores = (queries @ gallery.T).tolist()
        for i, key in enumerate(query_keys.tolist()):
            expected = brute_force_expectations(scores[i], [k == key for k in keys.tolist()], (1, 2, 3, 5))
            for name, value in expected.items():
                assert per_query[name][i].item() == pytest.approx(value, abs=1e-12), (i, name)


def test_collapsed_model_scores_exactly_chance():
    # Every embedding the same (a non-trivial vector, so the float rounding of the dot product is real).
    n, d = 101, 24
    collapsed = unit(1, d, seed=50).expand(n, d).contiguous()
    keys = torch.arange(n)
    labels = torch.tensor([i % 7 if i < 91 else 7 for i in range(n)])  # uneven class sizes: 13 or 10
    for chunk_size in (1, 9, 4096):  # a one-row block runs as a matrix-vector product
        instance = retrieval_metrics(collapsed, collapsed, keys, keys, chunk_size=chunk_size)
        harmonic = sum(1 / r for r in range(1, n + 1))
        assert instance == pytest.approx(
            {"R@1": 100 / n, "R@5": 500 / n, "R@10": 1000 / n, "median_rank": (n + 1) / 2, "mAP": 100 * harmonic / n},
            rel=1e-12,
        )
        assert instance == pytest.approx(chance_levels(keys, keys), rel=1e-12)
        class_level = retrieval_metrics(collapsed, collapsed, labels, labels, chunk_size=chunk_size)
        assert class_level == pytest.approx(chance_levels(labels, labels), rel=1e-12)
    # Class-level chance from the class sizes: R@k = 1 - C(M - r, k) / C(M, k) per query.
    sizes = torch.bincount(labels)[labels].tolist()
    for k in (1, 5, 10):
        reference = 100 * sum(1 - math.comb(n - r, k) / math.comb(n, k) for r in sizes) / n
        assert class_level[f"R@{k}"] == pytest.approx(reference, rel=1e-12)


def test_chance_map_matches_enumeration_of_random_rankings():
    # Six items, two relevant: all 15 placements of the relevant pair are equally likely.
    m, r = 6, 2
    aps = []
    for positions in itertools.combinations(range(1, m + 1), r):
        aps.append(sum((i + 1) / p for i, p in enumerate(positions)) / r)
    keys = torch.tensor([0, 0, 1, 2, 3, 4])
    assert chance_levels(torch.tensor([0]), keys)["mAP"] == pytest.approx(100 * sum(aps) / len(aps), rel=1e-12)


def test_single_relevant_item_ap_is_reciprocal_rank():
    query, gallery, query_keys, gallery_keys = random_case(30, 80, 8, 80, seed=9)
    gallery_keys = torch.arange(80)  # unique keys: exactly one relevant item each
    query_keys = torch.randperm(80, generator=torch.Generator().manual_seed(0))[:30]
    ranks = rank_of_matches(query, gallery, query_keys, gallery_keys)
    aps = average_precision(query, gallery, query_keys, gallery_keys)
    torch.testing.assert_close(aps, 1 / (ranks.higher.float() + 1))
    assert ranks.higher.max() > 0  # the case is not trivially all rank 0


def test_class_level_relevance_matches_reference_and_beats_instance_level():
    n, d = 60, 16
    labels = torch.arange(n) % 4
    image = unit(n, d, seed=11)
    text = F.normalize(image + 0.8 * unit(n, d, seed=12), dim=1)
    ref_ranks, ref_aps = reference_ranks_and_ap(text, image, labels, labels)
    metrics = retrieval_metrics(text, image, labels, labels, chunk_size=7)
    assert metrics["R@1"] == pytest.approx(100 * sum(r < 1 for r in ref_ranks) / n)
    assert metrics["mAP"] == pytest.approx(100 * sum(ref_aps) / n, abs=1e-4)
    instance = retrieval_metrics(text, image, torch.arange(n), torch.arange(n))
    # The relevant set only grows from instance to class level, so every rank can only improve.
    assert metrics["R@1"] >= instance["R@1"]
    assert metrics["median_rank"] <= instance["median_rank"]


def test_recall_and_median_rank_values():
    recalls = recall_at_k(torch.tensor([0, 0, 4, 9, 10, 50]), ks=(1, 5, 10, 100))
    assert recalls == pytest.approx({"R@1": 100 * 2 / 6, "R@5": 50.0, "R@10": 100 * 4 / 6, "R@100": 100.0})
    query, gallery, query_keys, gallery_keys = ranked_gallery(
        [[position == rank for position in range(6)] for rank in (0, 1, 4, 5)]
    )
    # 1-based ranks 1, 2, 5, 6: the median of an even count averages the middle two.
    assert retrieval_metrics(query, gallery, query_keys, gallery_keys)["median_rank"] == 3.5


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 32, 4096])
@pytest.mark.parametrize("k", [1, 5, 37])
def test_topk_chunked_matches_torch_topk(chunk_size, k):
    query, gallery = unit(45, 16, seed=20), unit(37, 16, seed=21)
    scores, indices = topk_chunked(query, gallery, k, chunk_size=chunk_size)
    ref_scores, ref_indices = torch.topk(query @ gallery.T, k, dim=1)
    assert scores.shape == indices.shape == (45, k)
    # Block matmuls may round a dot product differently (~1 ulp); random scores have no ties.
    torch.testing.assert_close(scores, ref_scores, atol=1e-6, rtol=0)
    assert torch.equal(indices, ref_indices)


@pytest.mark.parametrize("chunk_size", [1, 4, 9, 1000])
def test_topk_chunked_scores_exact_with_ties(chunk_size):
    # Small integer vectors: dot products are exact in any summation order, and ties abound.
    generator = torch.Generator().manual_seed(3)
    query = torch.randint(-2, 3, (23, 6), generator=generator).float()
    gallery = torch.randint(-2, 3, (31, 6), generator=generator).float()
    sims = query @ gallery.T
    for k in (1, 6, 31):
        scores, indices = topk_chunked(query, gallery, k, chunk_size=chunk_size)
        assert torch.equal(scores, torch.topk(sims, k, dim=1).values)
        assert torch.equal(sims.gather(1, indices), scores)  # indices point at those scores
        assert all(len(set(row)) == k for row in indices.tolist())  # no item returned twice


def make_modalities(n: int = 50, d: int = 16, noise: float = 0.3) -> dict[str, torch.Tensor]:
    shared = unit(n, d, seed=30)
    return {
        name: F.normalize(shared + noise * unit(n, d, seed=31 + i), dim=1)
        for i, name in enumerate(["image", "text", "audio", "depth"])
    }


def test_retrieval_matrix_pairs_flags_and_values():
    embeddings = make_modalities()
    keys = torch.arange(50) + 1000
    labels = torch.arange(50) % 5
    trained = [("image", "text"), ("audio", "image")]
    instance, class_level = retrieval_matrix(embeddings, keys, trained, class_labels=labels, chunk_size=9)
    names = list(embeddings)
    assert set(instance) == {f"{q}->{g}" for q, g in itertools.permutations(names, 2)}
    assert len(instance) == len(names) * (len(names) - 1)
    expected_trained = {"image->text", "text->image", "audio->image", "image->audio"}
    assert {pair for pair, entry in instance.items() if entry["trained"]} == expected_trained
    assert {pair for pair, entry in class_level.items() if entry["trained"]} == expected_trained
    direct = retrieval_metrics(embeddings["depth"], embeddings["text"], keys, keys)
    values = {k: v for k, v in instance["depth->text"].items() if k != "trained" and not k.endswith("_ci")}
    assert values == pytest.approx(direct)
    for pair, entry in instance.items():
        assert entry["R@1"] > 100 * 1 / 50 * 5, pair  # well above chance for correlated modalities
        assert class_level[pair]["R@1"] >= entry["R@1"], pair
        for table in (entry, class_level[pair]):
            assert {f"{m}_ci" for m in ("R@1", "R@5", "R@10", "mAP")} <= set(table)
            for m in ("R@1", "R@5", "R@10", "mAP"):
                low, high = table[f"{m}_ci"]
                assert 0.0 <= low <= table[m] <= high <= 100.0, (pair, m)
    frozen = {frozenset(p) for p in trained}
    again, none = retrieval_matrix(embeddings, keys, frozen)
    assert none is None
    assert again == instance  # seeded: the same intervals every time
    plain, _ = retrieval_matrix(embeddings, keys, frozen, bootstrap=None)
    assert not any(k.endswith("_ci") for entry in plain.values() for k in entry)


def test_evaluate_retrieval_per_query_values_chance_and_summary_intervals():
    embeddings = make_modalities(n=60, noise=0.8)
    ids, labels = torch.arange(60) * 3, torch.arange(60) % 4
    result = evaluate_retrieval(embeddings, ids, [("image", "text")], class_labels=labels)
    pairs = [f"{q}->{g}" for q, g in itertools.permutations(embeddings, 2)]
    expected_keys = {
        f"{level}/{p}/{m}"
        for level in ("retrieval", "retrieval_class")
        for p in pairs
        for m in ("R@1", "R@5", "R@10", "AP")
    }
    assert set(result.per_query) == expected_keys
    for key, values in result.per_query.items():
        level, pair, metric = key.split("/")
        table = result.instance if level == "retrieval" else result.class_level
        assert values.dtype == np.float32 and values.shape == (60,)
        assert ((values >= 0) & (values <= 1)).all()
        # The table's number is the mean of the per-query values.
        assert 100 * values.astype(np.float64).mean() == pytest.approx(table[pair]["mAP" if metric == "AP" else metric])
    assert result.chance["retrieval"] == pytest.approx(chance_levels(ids, ids))
    assert result.chance["retrieval_class"]["R@1"] == pytest.approx(100 * 15 / 60)  # 15 of 60 share a class
    summary = summarize(result.instance)
    assert set(result.summary_ci) == set(summary)
    for key, (low, high) in result.summary_ci.items():
        assert low <= summary[key] <= high, key
    # The emergent mean's interval is narrower than a single pair's: it averages several noisy pairs.
    width = result.summary_ci["emergent/R@1"][1] - result.summary_ci["emergent/R@1"][0]
    assert width < max(e["R@1_ci"][1] - e["R@1_ci"][0] for e in result.instance.values() if not e["trained"])


def test_rows_sharing_a_key_are_resampled_as_one_group():
    # Each sample held out twice as an exact copy (one sound, two captions' rows): relevance is the shared
    # key, so both copies score the same, and the intervals are the bootstrap over the 60 keys, not 120 rows.
    from bindspace.evaluation.stats import DEFAULT_BOOTSTRAP

    embeddings = {m: e.repeat_interleave(2, 0) for m, e in make_modalities(n=60, noise=0.8).items()}
    keys = torch.arange(60).repeat_interleave(2) * 5
    result = evaluate_retrieval(embeddings, keys, [("image", "text")])
    widened = 0
    for pair, entry in result.instance.items():
        values = result.per_query[f"retrieval/{pair}/R@5"].astype(np.float64)
        assert np.array_equal(values[0::2], values[1::2])
        one_copy = 100 * DEFAULT_BOOTSTRAP.intervals(values[0::2])
        np.testing.assert_allclose(entry["R@5_ci"], one_copy, rtol=0, atol=1e-9)
        rows = 100 * DEFAULT_BOOTSTRAP.intervals(values)  # what rows resampled as independent would say
        if one_copy[1] > one_copy[0]:
            assert entry["R@5_ci"][1] - entry["R@5_ci"][0] > 1.2 * (rows[1] - rows[0])
            widened += 1
    assert widened >= 4


def test_small_gallery_is_warned_about_once(caplog, monkeypatch):
    monkeypatch.setattr("bindspace.evaluation.retrieval._warned", set())
    embeddings = make_modalities(n=8)
    with caplog.at_level(logging.WARNING, logger="bindspace.evaluation.retrieval"):
        evaluate_retrieval(embeddings, torch.arange(8), [])
    assert "gallery of 8 items is too small for R@1, R@5, R@10, mAP" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bindspace.evaluation.retrieval"):
        evaluate_retrieval(embeddings, torch.arange(8), [])  # e.g. the next validation: said already
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING, logger="bindspace.evaluation.retrieval"):
        evaluate_retrieval(make_modalities(n=100), torch.arange(100), [])
    assert caplog.text == ""  # 100 items: R@10 chance is exactly 10%


def test_format_retrieval_table_shows_modalities_markers_and_chance():
    embeddings = make_modalities(noise=1.0)
    names = list(embeddings)
    instance, _ = retrieval_matrix(embeddings, torch.arange(50), [("image", "text")])
    table = format_retrieval_table(instance, metric="R@5", gallery_size=50)
    assert table.isascii()
    lines = table.splitlines()
    assert lines[1].split()[-len(names) :] == names  # header row, after "query \ gallery"
    for row, q in zip(lines[2 : 2 + len(names)], names, strict=True):
        expected = [q]
        for g in names:
            if q == g:
                expected.append("-")
            else:
                marker = "*" if {q, g} == {"image", "text"} else ""
                entry = instance[f"{q}->{g}"]
                low, high = entry["R@5_ci"]  # every number with its interval beside it
                expected += [f"{entry['R@5']:.1f}", f"[{low:.1f},", f"{high:.1f}]{marker}"]
        assert row.split() == expected
    assert "trained" in lines[2 + len(names)] and "emergent" in lines[2 + len(names)]  # legend
    assert "R@5 = 100*5/50 = 10.00" in table
    # mAP at random with one match among 4: mean of 1, 1/2, 1/3, 1/4.
    assert "= 52.08" in format_retrieval_table(instance, metric="mAP", gallery_size=4)
    ordered = format_retrieval_table(instance, modalities=["depth", "image"])
    assert ordered.splitlines()[1].split()[-2:] == ["depth", "image"]
    low, high = instance["depth->image"]["R@1_ci"]
    assert ordered.splitlines()[2].split() == [
        "depth",
        "-",
        f"{instance['depth->image']['R@1']:.1f}",
        f"[{low:.1f},",
        f"{high:.1f}]",
    ]


def test_summarize_averages_trained_and_emergent_separately():
    metrics = {
        "a->b": {"R@1": 10.0, "R@5": 20.0, "mAP": 5.0, "median_rank": 3.0, "trained": True},
        "b->a": {"R@1": 30.0, "R@5": 40.0, "mAP": 7.0, "median_rank": 2.0, "trained": True},
        "a->c": {"R@1": 1.0, "R@5": 2.0, "mAP": 1.0, "median_rank": 9.0, "trained": False},
    }
    summary = summarize(metrics)
    assert summary == pytest.approx(
        {
            "trained/R@1": 20.0,
            "trained/R@5": 30.0,
            "trained/mAP": 6.0,
            "emergent/R@1": 1.0,
            "emergent/R@5": 2.0,
            "emergent/mAP": 1.0,
        }
    )
    del metrics["a->c"]
    assert not any(key.startswith("emergent/") for key in summarize(metrics))


def test_errors_are_clear():
    query, gallery = unit(5, 8, seed=40), unit(6, 8, seed=41)
    keys_q, keys_g = torch.arange(5), torch.arange(6)
    with pytest.raises(ValueError, match="D=4"):
        rank_of_matches(unit(5, 4, seed=1), gallery, keys_q, keys_g)
    with pytest.raises(ValueError, match="gallery_keys must have shape"):
        rank_of_matches(query, gallery, keys_q, torch.arange(5))
    with pytest.raises(ValueError, match="2 of 5 queries have no relevant"):
        rank_of_matches(query, gallery, torch.tensor([0, 1, 99, 2, 98]), keys_g)
    with pytest.raises(ValueError, match="no relevant"):
        average_precision(query, gallery, torch.tensor([0, 1, 99, 2, 98]), keys_g)
    with pytest.raises(ValueError, match="NaN"):
        rank_of_matches(torch.full((5, 8), float("nan")), gallery, keys_q, keys_g)
    with pytest.raises(ValueError, match="k must be"):
        topk_chunked(query, gallery, k=7)
    with pytest.raises(ValueError, match="two different modalities"):
        retrieval_matrix(make_modalities(), torch.arange(50), [("image", "image")])
    bad = {**make_modalities(), "depth": unit(49, 16, seed=0)}
    with pytest.raises(ValueError, match="depth"):
        retrieval_matrix(bad, torch.arange(50), [])


def test_tables_state_chance_and_mark_what_the_gallery_cannot_measure():
    embeddings = make_modalities(n=8)
    instance, class_level = retrieval_matrix(
        embeddings, torch.arange(8), [("image", "text")], class_labels=torch.arange(8) % 2
    )
    small = format_retrieval_table(instance, "R@5", gallery_size=8)
    assert small.splitlines()[0].startswith("R@5 (!) ")
    assert "R@5 = 100*5/8 = 62.50" in small and "(!) R@5 is marked" in small
    big, _ = retrieval_matrix(make_modalities(n=50), torch.arange(50), [])
    assert "(!)" not in format_retrieval_table(big, "R@1", gallery_size=50)
    # Class level: chance from the actual class sizes (4 of 8 relevant), not from the gallery size.
    chance = chance_levels(torch.arange(8) % 2, torch.arange(8) % 2)
    text = format_retrieval_table(class_level, "R@1", chance=chance)
    assert "chance (random ranking of this gallery): R@1 = 50.00" in text and "(!)" in text
    assert "median_rank" not in text  # only the shown metric's chance


def test_summary_line_gives_interval_and_multiple_of_chance():
    summary = {"trained/R@1": 8.2, "emergent/R@1": 0.3}
    ci = {"trained/R@1": [7.1, 9.4], "emergent/R@1": [0.1, 0.5]}
    line = format_summary(summary, ci, {"R@1": 0.1})
    assert line == "trained/R@1=8.2 [7.1, 9.4] (82x chance), emergent/R@1=0.3 [0.1, 0.5] (3.0x chance)"
    assert format_summary(summary) == "trained/R@1=8.2, emergent/R@1=0.3"


def test_metrics_report_prints_every_matrix_with_chance():
    embeddings = make_modalities(n=40)
    labels = torch.arange(40) % 4
    result = evaluate_retrieval(embeddings, torch.arange(40), [("image", "text")], class_labels=labels)
    metrics = {
        "retrieval": result.instance,
        "retrieval_class": result.class_level,
        "gallery_size": 40,
        "chance": {**result.chance, "zero_shot": {"num_classes": 4, "top1": 25.0, "top5": 100.0}},
        "zero_shot": {"audio": {"top1": 60.0, "top1_ci": [50.0, 70.0], "top5": 100.0, "top5_ci": [100.0, 100.0]}},
        "summary": summarize(result.instance),
        "summary_ci": result.summary_ci,
    }
    text = format_metrics_report(metrics, list(embeddings))
    assert text.count("chance (random ranking of this gallery)") == 3  # R@1, R@10, class-level R@1
    assert "R@10 (!)" in text  # 40 items: R@10 has a chance of 25%
    assert "chance (random guess among 4 classes, 100*k/C): top1 = 25.00, top5 = 100.00" in text
    assert re.search(r"audio +60.0 \[50.0, 70.0\] +100.0 \[100.0, 100.0\]", text)
    assert "top5 is marked: a random guess already scores above 10% (too few classes)" in text
    assert re.search(
        r"summary \(mean over pairs, \[95% interval\]\): trained/R@1=[\d.]+ \[[\d.]+, [\d.]+\] \(\d+x chance\)", text
    )
