"""Bootstrap intervals over queries (against scipy, coverage, speed) and the per_query.npz format."""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.stats
import torch

from bindspace.evaluation.stats import (
    DEFAULT_BOOTSTRAP,
    Bootstrap,
    percent_intervals,
    read_per_query,
    uninformative,
    write_per_query,
)


def test_interval_agrees_with_scipy_percentile_bootstrap():
    rng = np.random.default_rng(0)
    values = (rng.random(500) < 0.3).astype(float)  # per-query hits of a model at R@1 ~ 30%
    ours = Bootstrap(resamples=2000, seed=1).intervals(values)
    ref = scipy.stats.bootstrap(
        (values,), np.mean, n_resamples=2000, confidence_level=0.95, method="percentile", random_state=2
    ).confidence_interval
    se = values.std(ddof=1) / np.sqrt(len(values))
    # Two Monte Carlo estimates of the same quantiles: each endpoint within half a standard error.
    assert abs(ours[0] - ref.low) < 0.5 * se and abs(ours[1] - ref.high) < 0.5 * se
    assert ours[0] < values.mean() < ours[1]


def test_intervals_cover_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    datasets = (rng.random((300, 400)) < 0.2).astype(float)  # 400 runs of 300 queries, true mean 0.2
    bounds = DEFAULT_BOOTSTRAP.intervals(datasets)
    covered = ((bounds[:, 0] <= 0.2) & (bounds[:, 1] >= 0.2)).mean()
    assert 0.91 <= covered <= 0.99


def test_resamples_are_seeded_and_shared_by_every_column():
    rng = np.random.default_rng(4)
    column = rng.random(120)
    values = np.stack([column, column, rng.random(120)], axis=1)
    bounds = Bootstrap(seed=7).intervals(values)
    assert np.array_equal(bounds[0], bounds[1])  # same rows resampled for every column
    assert np.array_equal(bounds, Bootstrap(seed=7).intervals(values))  # seeded
    assert not np.array_equal(bounds, Bootstrap(seed=8).intervals(values))
    np.testing.assert_allclose(Bootstrap(seed=7).intervals(column), bounds[0], rtol=0, atol=1e-12)  # 1-D: (2,)
    # A constant column (a collapsed model) has a zero-width interval at its value.
    assert Bootstrap().intervals(np.full(50, 0.02)).tolist() == [0.02, 0.02]


def test_one_run_of_intervals_is_cheap():
    # 30 pairs x 2 levels x 4 metrics (+ summary columns) over 1000 queries, first call included.
    values = np.random.default_rng(5).random((1000, 30 * 2 * 4 + 8))
    start = time.perf_counter()
    percent_intervals(Bootstrap(seed=11), {i: values[:, i] for i in range(values.shape[1])})
    assert time.perf_counter() - start < 1.0


def test_large_query_sets_are_resampled_in_blocks_identically():
    # Above the cache size the counts are drawn again per call, block by block, with the same draws.
    values = np.random.default_rng(6).random(20_000)
    first = Bootstrap(resamples=1000, seed=3).intervals(values)
    assert np.array_equal(first, Bootstrap(resamples=1000, seed=3).intervals(values))
    assert first[0] < values.mean() < first[1]


def test_bootstrap_record_and_errors():
    assert DEFAULT_BOOTSTRAP.as_dict() == {
        "resamples": 1000,
        "seed": 0,
        "level": 0.95,
        "method": "percentile",
        "unit": "query",
    }
    with pytest.raises(ValueError, match="level"):
        Bootstrap(level=95)
    with pytest.raises(ValueError, match="resamples"):
        Bootstrap(resamples=5)
    with pytest.raises(ValueError, match="NaN"):
        DEFAULT_BOOTSTRAP.intervals(np.array([0.1, np.nan]))


def test_uninformative_metrics_are_those_above_ten_percent_chance():
    assert uninformative({"R@1": 12.5, "R@5": 62.5, "mAP": 9.0, "median_rank": 4.5}) == ["R@1", "R@5", "median_rank"]
    assert uninformative({"R@10": 10.0, "top1": 10.0, "top5": 50.0}) == ["top5"]


def per_query_arrays(n: int = 6) -> dict:
    rng = np.random.default_rng(0)
    return {
        "ids": torch.arange(n) + 100,
        "labels": np.arange(n) % 2,
        "retrieval/image->text/R@1": rng.random(n),
        "retrieval/image->text/AP": torch.rand(n),
        "retrieval_class/image->text/R@10": rng.random(n),
        "zero_shot/audio/top5": rng.random(n).astype(np.float32),
    }


def test_per_query_file_round_trip(tmp_path):
    arrays = per_query_arrays()
    path = write_per_query(tmp_path / "per_query.npz", arrays)
    assert [p.name for p in tmp_path.iterdir()] == ["per_query.npz"]  # no temporary left behind
    back = read_per_query(path)
    assert set(back) == set(arrays)
    assert back["ids"].dtype == np.int64 and back["ids"].tolist() == list(range(100, 106))
    assert back["labels"].dtype == np.int64
    for key in arrays:
        if key not in ("ids", "labels"):
            assert back[key].dtype == np.float32
            np.testing.assert_array_equal(back[key], np.asarray(arrays[key], dtype=np.float32))
    with np.load(path, allow_pickle=False) as raw:  # a plain npz, readable without bindspace
        assert sorted(raw.files) == sorted(arrays)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.pop("ids"), "no 'ids'"),
        (lambda a: a.update({"retrieval/image->text/R@2x": np.zeros(6)}), "unknown key"),
        (lambda a: a.update({"retrieval/image->text/R@5": np.zeros(5)}), r"shape \(5,\)"),
        (lambda a: a.update({"zero_shot/audio/top1": np.full(6, 1.5)}), r"\[0, 1\]"),
        (lambda a: a.update({"labels": np.full(6, 0.5)}), "integers"),
    ],
)
def test_per_query_file_rejects_what_does_not_fit(tmp_path, change, message):
    arrays = per_query_arrays()
    change(arrays)
    with pytest.raises(ValueError, match=message):
        write_per_query(tmp_path / "per_query.npz", arrays)
    assert not (tmp_path / "per_query.npz").exists()


@pytest.mark.slow
def test_train_and_eval_write_intervals_chance_and_per_query_values(tmp_path_factory):
    import json

    from test_eval_cli import compose_eval
    from test_inference import trained_run_dir

    from bindspace.eval import run as evaluate

    trained = trained_run_dir(tmp_path_factory)
    out = tmp_path_factory.mktemp("eval_per_query")
    evaluate(compose_eval([f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}", "eval.plots=false"], str(out)))
    for run_dir in (trained, out):
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["bootstrap"] == DEFAULT_BOOTSTRAP.as_dict()
        n = metrics["gallery_size"]
        assert metrics["chance"]["retrieval"]["R@1"] == pytest.approx(100 / n)
        assert metrics["chance"]["zero_shot"]["top1"] == pytest.approx(
            100 / metrics["chance"]["zero_shot"]["num_classes"]
        )
        assert set(metrics["summary_ci"]) == set(metrics["summary"])
        arrays = read_per_query(run_dir / "per_query.npz")
        assert arrays["ids"].shape == (n,) and arrays["labels"].shape == (n,)
        for level in ("retrieval", "retrieval_class"):
            for pair, entry in metrics[level].items():
                for metric in ("R@1", "R@5", "R@10", "mAP"):
                    low, high = entry[f"{metric}_ci"]
                    assert low <= entry[metric] <= high
                    values = arrays[f"{level}/{pair}/{'AP' if metric == 'mAP' else metric}"]
                    assert 100 * values.astype(np.float64).mean() == pytest.approx(entry[metric], abs=1e-4)
        for m, entry in metrics["zero_shot"].items():
            assert 100 * arrays[f"zero_shot/{m}/top1"].astype(np.float64).mean() == pytest.approx(
                entry["top1"], abs=1e-4
            )
        text = (run_dir / "retrieval.txt").read_text()
        assert "chance (random ranking of this gallery): R@1" in text and "x chance)" in text


# ---- held-out rows that share a group: the cluster bootstrap ---------------------------------------


def test_distinct_group_labels_give_the_row_bootstrap_bit_for_bit():
    # Every published interval comes from one row per group: passing such groups must not move a number.
    values = np.random.default_rng(8).random((300, 5))
    rows = Bootstrap(seed=2).intervals(values)
    for groups in (np.arange(300), np.arange(300)[::-1] * 7, [f"id{i}" for i in range(300)], torch.arange(300)):
        assert np.array_equal(Bootstrap(seed=2).intervals(values, groups), rows)
    columns = {i: values[:, i] for i in range(5)}
    by_row = percent_intervals(Bootstrap(seed=2), columns)
    assert percent_intervals(Bootstrap(seed=2), columns, np.arange(300)) == by_row


@pytest.mark.parametrize("k", [2, 3, 5])
def test_exact_copies_resampled_by_group_give_the_interval_of_the_originals(k):
    # One sound held out once per caption: k identical rows. Resampling rows treats them as k independent
    # draws (an interval about 1/sqrt(k) as wide: the bug); resampling groups gives the originals' interval.
    values = np.random.default_rng(9).random((200, 3))
    originals = Bootstrap(seed=4).intervals(values)
    copies, groups = np.repeat(values, k, axis=0), np.repeat(np.arange(200), k)
    clustered = Bootstrap(seed=4).intervals(copies, groups)
    np.testing.assert_allclose(clustered, originals, rtol=0, atol=1e-12)  # the same draws, over groups
    width = originals[:, 1] - originals[:, 0]
    rows = Bootstrap(seed=4).intervals(copies)
    np.testing.assert_allclose((rows[:, 1] - rows[:, 0]) / width, 1 / np.sqrt(k), rtol=0.15)


def test_groups_of_unequal_size_take_the_weighted_mean_of_each_resample():
    rng = np.random.default_rng(10)
    sizes = rng.integers(1, 6, size=80)
    groups = np.repeat(np.arange(80), sizes)
    values = rng.random(len(groups)) + 0.5 * (groups % 2)  # groups differ in level: clustering matters
    low, high = Bootstrap(resamples=400, seed=5).intervals(values, groups)
    # The definition, spelled out: resample groups with the same seeded counts, weight rows, ratio of sums.
    from bindspace.evaluation.stats import _resample_blocks

    means = []
    for _, counts in _resample_blocks(80, 400, 5):
        w = counts[:, groups]
        means.extend((w @ values) / w.sum(1))
    ref = np.quantile(means, [0.025, 0.975])
    np.testing.assert_allclose([low, high], np.clip(ref, values.min(), values.max()), rtol=0, atol=1e-12)
    assert high - low > np.subtract(*Bootstrap(resamples=400, seed=5).intervals(values)[::-1])
    with pytest.raises(ValueError, match=r"groups must be \(10,\)"):
        DEFAULT_BOOTSTRAP.intervals(np.zeros(10), np.zeros(9))


def test_bootstrap_record_says_group_when_rows_share_groups():
    assert DEFAULT_BOOTSTRAP.as_dict(grouped=True) == {**DEFAULT_BOOTSTRAP.as_dict(), "unit": "group"}


def test_zero_shot_and_probe_intervals_resample_groups():
    from bindspace.evaluation.probe import probe_modality
    from bindspace.evaluation.zero_shot import zero_shot_from_classes

    gen = torch.Generator().manual_seed(0)
    classes = torch.nn.functional.normalize(torch.randn(5, 8, generator=gen), dim=-1)
    labels = torch.randint(0, 5, (120,), generator=gen)
    embs = torch.nn.functional.normalize(classes[labels] + 0.9 * torch.randn(120, 8, generator=gen), dim=-1)
    once = zero_shot_from_classes(embs, labels, classes)
    twice = zero_shot_from_classes(embs.repeat_interleave(3, 0), labels.repeat_interleave(3), classes,
                                   groups=torch.arange(120).repeat_interleave(3))  # fmt: skip
    for key in ("top1_ci", "top5_ci"):
        np.testing.assert_allclose(twice[key], once[key], rtol=0, atol=1e-9)
    x, y = embs.numpy(), labels.numpy()
    probe_once = probe_modality(x[:60], y[:60], x[60:], y[60:])
    probe_twice = probe_modality(x[:60], y[:60], np.repeat(x[60:], 3, 0), np.repeat(y[60:], 3),
                                 score_groups=np.repeat(np.arange(60), 3))  # fmt: skip
    np.testing.assert_allclose(probe_twice["top1_ci"], probe_once["top1_ci"], rtol=0, atol=1e-9)


def test_per_query_file_keeps_integer_groups(tmp_path):
    arrays = {**per_query_arrays(), "groups": np.array([0, 0, 1, 1, 2, 3])}
    back = read_per_query(write_per_query(tmp_path / "per_query.npz", arrays))
    assert back["groups"].dtype == np.int64 and back["groups"].tolist() == [0, 0, 1, 1, 2, 3]
    with pytest.raises(ValueError, match="integers"):
        write_per_query(tmp_path / "bad.npz", {**arrays, "groups": np.full(6, 0.5)})
