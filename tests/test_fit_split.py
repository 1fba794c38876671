"""Fit and score apart by sample id: planted overlaps are split, the split is stable, the proof fails on a leak."""

from __future__ import annotations

import pytest

from bindspace.evaluation.fit_split import check_disjoint, fit_rank, split_fit_and_score


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_disjoint_splits_are_used_whole():
    plan = split_fit_and_score(ids("v", 5), ids("t", 7))
    assert plan.fit_rows == list(range(5)) and plan.score_rows == list(range(7))
    assert plan.info == {
        "method": "separate_splits", "fit_from": "val", "scored_from": "test",
        "shared_ids": 0, "fit_ids": 5, "score_ids": 7, "overlap": 0,
    }  # fmt: skip


def test_one_set_for_both_is_halved_by_id_hash():
    same = ids("s", 101)
    plan = split_fit_and_score(same, same)
    fitted, scored = {same[i] for i in plan.fit_rows}, {same[i] for i in plan.score_rows}
    assert not fitted & scored and fitted | scored == set(same)
    assert (len(fitted), len(scored)) == (50, 51)
    assert plan.info["method"] == "id_hash" and plan.info["shared_ids"] == 101 and plan.info["overlap"] == 0
    # The halves are the hash order of the ids, whatever order the rows come in.
    assert fitted == set(sorted(same, key=fit_rank)[:50])
    again = split_fit_and_score(same[::-1], same[::-1])
    assert {same[::-1][i] for i in again.score_rows} == scored


def test_a_partial_overlap_splits_only_the_shared_ids():
    val, test = ids("v", 10) + ids("s", 20), ids("s", 20) + ids("t", 30)
    plan = split_fit_and_score(val, test)
    fitted, scored = [val[i] for i in plan.fit_rows], [test[i] for i in plan.score_rows]
    assert not set(fitted) & set(scored)
    assert set(ids("v", 10)) <= set(fitted) and set(ids("t", 30)) <= set(scored)  # unshared ids stay put
    assert len(set(fitted) - set(ids("v", 10))) == 10 and len(set(scored) - set(ids("t", 30))) == 10
    assert plan.info["shared_ids"] == 20


def test_repeated_ids_stay_on_one_side():
    # Several held-out manifests may reuse an id; every row of an id goes to the same half.
    same = ["a", "b", "a", "c", "d", "b"]
    plan = split_fit_and_score(same, same)
    assert not {same[i] for i in plan.fit_rows} & {same[i] for i in plan.score_rows}
    assert sorted(plan.fit_rows + plan.score_rows) == list(range(6))


def test_the_halves_do_not_follow_the_hash_that_chose_the_validation_set():
    # The val set of a manifest is every id with id_fraction < 0.1; an unsalted hash would put them all in one half.
    from bindspace.data.manifest import id_fraction

    val = [s for s in ids("row", 3000) if id_fraction(s) < 0.1]
    plan = split_fit_and_score(val, val)
    assert abs(len(plan.fit_rows) - len(plan.score_rows)) <= 1


def test_too_few_shared_samples_and_leaks_are_refused():
    with pytest.raises(ValueError, match="too few to fit on one part and score the other"):
        split_fit_and_score(["only"], ["only"])
    with pytest.raises(ValueError, match="need samples on both sides"):
        split_fit_and_score([], ["a"])
    with pytest.raises(ValueError, match=r"1 sample id\(s\) are both fitted on and scored, e.g. \['b'\]"):
        check_disjoint(["a", "b"], ["b", "c"])
    check_disjoint(["a"], ["b"])
