"""Retrieval metrics against a brute-force reference and hand-built cases with known answers."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from bindspace.evaluation.retrieval import (
    average_precision,
    rank_of_matches,
    recall_at_k,
    retrieval_matrix,
    retrieval_metrics,
    topk_chunked,
)
from bindspace.evaluation.tables import format_retrieval_table, summarize


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
        assert ranks.dtype == torch.long
        assert ranks.tolist() == ref_ranks
        aps = average_precision(query, gallery, query_keys, gallery_keys, chunk_size=chunk_size)
        torch.testing.assert_close(aps, torch.tensor(ref_aps), atol=1e-6, rtol=0)
    recalls = recall_at_k(torch.tensor(ref_ranks), ks=(1, 5, 10))
    for k in (1, 5, 10):
        assert recalls[f"R@{k}"] == pytest.approx(100 * sum(r < k for r in ref_ranks) / n)


def test_chunked_equals_unchunked_for_sizes_that_do_not_divide():
    query, gallery, query_keys, gallery_keys = random_case(101, 97, 12, 7, seed=5)
    full = retrieval_metrics(query, gallery, query_keys, gallery_keys, chunk_size=10_000)
    full_ranks = rank_of_matches(query, gallery, query_keys, gallery_keys, chunk_size=10_000)
    for chunk_size in (1, 6, 13, 50, 100, 102):
        ranks = rank_of_matches(query, gallery, query_keys, gallery_keys, chunk_size=chunk_size)
        assert torch.equal(ranks, full_ranks), chunk_size
        chunked = retrieval_metrics(query, gallery, query_keys, gallery_keys, chunk_size=chunk_size)
        assert chunked == pytest.approx(full, abs=1e-4), chunk_size


def test_known_ranks_give_exact_recall_median_and_map():
    # First (and only) relevant item at rank 0, 3 and 7.
    patterns = [[position == rank for position in range(12)] for rank in (0, 3, 7)]
    query, gallery, query_keys, gallery_keys = ranked_gallery(patterns)
    assert rank_of_matches(query, gallery, query_keys, gallery_keys).tolist() == [0, 3, 7]
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
    assert rank_of_matches(query, gallery, query_keys, gallery_keys).tolist() == [0, 1]


def test_ties_are_counted_optimistically():
    # Integer vectors make the scores exact: the relevant item (last) ties with two others at 1,
    # and one item scores 2 strictly above them.
    query = torch.tensor([[1.0, 0.0]])
    gallery = torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    gallery_keys = torch.tensor([0, 1, 2, 7, 3])
    assert rank_of_matches(query, gallery, torch.tensor([7]), gallery_keys).tolist() == [1]
    # Two relevant items tied with an irrelevant one: placed first among the tie, positions 2, 3.
    gallery_keys = torch.tensor([0, 1, 7, 7, 3])
    ap = average_precision(query, gallery, torch.tensor([7]), gallery_keys)
    torch.testing.assert_close(ap, torch.tensor([(1 / 2 + 2 / 3) / 2]))


def test_single_relevant_item_ap_is_reciprocal_rank():
    query, gallery, query_keys, gallery_keys = random_case(30, 80, 8, 80, seed=9)
    gallery_keys = torch.arange(80)  # unique keys: exactly one relevant item each
    query_keys = torch.randperm(80, generator=torch.Generator().manual_seed(0))[:30]
    ranks = rank_of_matches(query, gallery, query_keys, gallery_keys)
    aps = average_precision(query, gallery, query_keys, gallery_keys)
    torch.testing.assert_close(aps, 1 / (ranks.float() + 1))
    assert ranks.max() > 0  # the case is not trivially all rank 0


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
    assert {k: v for k, v in instance["depth->text"].items() if k != "trained"} == pytest.approx(direct)
    for pair, entry in instance.items():
        assert entry["R@1"] > 100 * 1 / 50 * 5, pair  # well above chance for correlated modalities
        assert class_level[pair]["R@1"] >= entry["R@1"], pair
    frozen = {frozenset(p) for p in trained}
    again, none = retrieval_matrix(embeddings, keys, frozen)
    assert none is None
    assert again == instance


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
                expected.append(f"{instance[f'{q}->{g}']['R@5']:.1f}{marker}")
        assert row.split() == expected
    assert "trained" in lines[2 + len(names)] and "emergent" in lines[2 + len(names)]  # legend
    assert "R@5 = 100*5/50 = 10.00" in table
    # mAP at random with one match among 4: mean of 1, 1/2, 1/3, 1/4.
    assert "= 52.08" in format_retrieval_table(instance, metric="mAP", gallery_size=4)
    ordered = format_retrieval_table(instance, modalities=["depth", "image"])
    assert ordered.splitlines()[1].split()[-2:] == ["depth", "image"]
    assert ordered.splitlines()[2].split() == [
        "depth",
        "-",
        f"{instance['depth->image']['R@1']:.1f}",
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
