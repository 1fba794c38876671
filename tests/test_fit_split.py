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


def test_rows_sharing_any_key_are_one_sample():
    # v1 and t0 hold one file under two ids; t1 and t2 one file under theirs: by id alone nothing is shared.
    fit_ids, score_ids = ["v0", "v1"], ["t0", "t1", "t2"]
    fit_keys, score_keys = [("v0", "file:a"), ("v1", "file:b")], [("t0", "file:b"), ("t1", "file:c"), ("t2", "file:c")]
    assert split_fit_and_score(fit_ids, score_ids).info["shared_ids"] == 0
    plan = split_fit_and_score(fit_ids, score_ids, fit_keys=fit_keys, score_keys=score_keys)
    assert plan.info["shared_ids"] == 1  # one sample shared: n // 2 = 0 fitted, 1 scored
    assert plan.fit_rows == [0] and plan.score_rows == [0, 1, 2]
    assert not set(plan.fit_ids) & set(plan.score_ids)


# ---- manifests: a row number names a row of its own manifest; a file is a sample wherever it is -----------


@pytest.fixture
def unnamed(tmp_path) -> dict[str, str]:
    """Two manifests without ids (disjoint files) and the first one's rows again under ids of their own."""
    from test_manifest import paired_rows, write_rows

    def rows(prefix: str) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "id"} for r in paired_rows(tmp_path, 6, ["image", "text"], prefix)]

    a, b = rows("a"), rows("b")
    sets = {"a": a, "b": b, "renamed": [{**r, "id": f"x{i}"} for i, r in enumerate(a)]}
    return {name: str(write_rows(tmp_path / f"{name}.jsonl", rows)) for name, rows in sets.items()}


def manifest_plan(fit: str, score: str):
    from bindspace.data.manifest import load_manifest, sample_keys, source_key

    f, s = load_manifest(fit).samples, load_manifest(score).samples
    return split_fit_and_score(
        [source_key(x) for x in f], [source_key(x) for x in s],
        fit_keys=[sample_keys(x) for x in f], score_keys=[sample_keys(x) for x in s],
    )  # fmt: skip


def test_manifests_without_ids_share_samples_by_file_not_by_row_number(unnamed):
    apart = manifest_plan(unnamed["a"], unnamed["b"])  # both number their rows 0..5, and share nothing
    assert apart.info["method"] == "separate_splits" and len(apart.score_rows) == 6
    same = manifest_plan(unnamed["renamed"], unnamed["a"])  # the same files under other ids
    assert same.info["shared_ids"] == 6 and len(same.fit_rows) + len(same.score_rows) == 6
    # One manifest for both sides: halved as before, by row number.
    by_id = split_fit_and_score([str(i) for i in range(6)], [str(i) for i in range(6)])
    one = manifest_plan(unnamed["a"], unnamed["a"])
    assert (one.fit_rows, one.score_rows) == (by_id.fit_rows, by_id.score_rows)


def test_connect_scores_disjoint_manifests_without_ids_and_refuses_the_same_files_renamed(unnamed):
    from bindspace.connect import eval_inputs, manifest_inputs
    from bindspace.errors import ConfigError

    fit = manifest_inputs(unnamed["a"], ["image", "text"], paired=False, key="fit")
    assert len(eval_inputs(unnamed["b"], {}, ["image", "text"], 0, fit).keys) == 6
    renamed = manifest_inputs(unnamed["renamed"], ["image", "text"], paired=False, key="fit")
    message = r"eval=.*a\.jsonl: 6 of its 6 samples are fitted on too \(the same id or file\), e.g. \['file:/"
    with pytest.raises(ConfigError, match=message):
        eval_inputs(unnamed["a"], {}, ["image", "text"], 0, renamed)


def test_eval_scores_every_row_of_a_test_manifest_apart_from_val(unnamed):
    from test_manifest import build

    from bindspace.eval import EvalOptions, fit_and_score_splits
    from bindspace.inference import BindSpace
    from bindspace.models.model import BindSpaceModel
    from bindspace.train import check_selection_apart

    dm = build([("image", "text")], train=unnamed["a"], val=unnamed["a"], test=unnamed["b"])
    bs = BindSpace(BindSpaceModel(dm.configs, embed_dim=8), edges=[("image", "text")])
    ref, test, plan = fit_and_score_splits(bs, dm, EvalOptions())
    assert plan.info["shared_ids"] == 0 and len(test[1]) == 6 and len(ref[1]) == 6
    check_selection_apart({"early_stopping": {"patience": 1}, "trainer": {}}, dm)  # selects on val, scores test
    dm = build([("image", "text")], train=unnamed["a"], val=unnamed["renamed"], test=unnamed["a"])
    _, test, plan = fit_and_score_splits(bs, dm, EvalOptions())
    assert plan.info["shared_ids"] == 6 and len(test[1]) == 3
