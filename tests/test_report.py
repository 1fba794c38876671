"""bindspace-report on hand-made multirun folders whose means and stds are known in advance."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from bindspace.report import (
    ReportError,
    build_report,
    chance_of,
    collect_runs,
    forgetting_cells,
    forgetting_table,
    group_stats,
    main,
    paired_differences,
    stage_curves,
    summary_rows_as_columns,
    summary_table,
    two_level_bootstrap,
    validation_panel,
    varying_keys,
    wandb_tables,
    write_report,
)
from bindspace.report.intervals import budget_of, recorded_budget
from bindspace.report.runs import group_label, group_runs

MODALITIES = ("image", "text", "audio")


def retrieval(anchor: str, base: float) -> dict:
    """Pairs touching `anchor` are trained and score base+10, +20, +30, +40 (mean base+25);
    the two emergent pairs score base and base+2 (mean base+1). R@5 = R@1 + 5, mAP = R@1 / 2."""
    table, trained_values, emergent_values = {}, iter([10, 20, 30, 40]), iter([0, 2])
    for q, g in itertools.permutations(MODALITIES, 2):
        trained = anchor in (q, g)
        r1 = base + next(trained_values if trained else emergent_values)
        table[f"{q}->{g}"] = {"R@1": r1, "R@5": r1 + 5, "R@10": r1 + 9, "mAP": r1 / 2, "trained": trained}
    return table


def make_job(root: Path, num: int, overrides: dict, base: float | None, stages=None, config_extra=None) -> Path:
    """One Hydra job folder; base=None makes a failed job (no metrics.json)."""
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    anchors = overrides.get("anchor", "image").strip("[]").split(",")
    config = {
        "seed": int(overrides.get("seed", 0)),
        "tags": ["ablation"],
        "graph": {"modalities": [*MODALITIES, "depth", "thermal", "imu"], "anchors": dict.fromkeys(anchors, True)},
        "curriculum": {"name": "all_at_once"},
        **(config_extra or {}),
    }
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"{k}={v}" for k, v in overrides.items()]))
    if base is not None:
        metrics = {"retrieval": retrieval(anchors[0], base), "gallery_size": 100, "anchor": anchors, "steps": 200}
        if stages is not None:
            metrics["stages"] = stages
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


@pytest.fixture
def sweep(tmp_path) -> Path:
    """anchor=image,text x seed=0,1, plus a failed third text seed; the image runs have two stages."""
    root = tmp_path / "multirun"

    def stages(base: float, offset: int) -> list[dict]:
        return [
            {"name": "image-text", "step": 100 + offset, "retrieval": retrieval("image", base - 5)},
            {"name": "all", "step": 200 + offset, "retrieval": retrieval("image", base)},
        ]

    make_job(root, 0, {"anchor": "image", "seed": 0}, 10, stages(10, 0))
    make_job(root, 1, {"anchor": "image", "seed": 1}, 14, stages(14, 10))
    make_job(root, 2, {"anchor": "text", "seed": 0}, 20)
    make_job(root, 3, {"anchor": "text", "seed": 1}, 26)
    make_job(root, 4, {"anchor": "text", "seed": 2}, None)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_collect_runs_reads_every_job_and_marks_the_failed_one(sweep):
    runs = collect_runs(sweep)
    assert [r.path.name for r in runs] == ["0", "1", "2", "3", "4"]
    assert [r.anchor for r in runs] == ["image", "image", "text", "text", "text"]
    assert [r.seed for r in runs] == [0, 1, 0, 1, 2]
    assert [r.failed for r in runs] == [False, False, False, False, True]
    assert runs[4].metrics is None and "metrics.json" in runs[4].reason
    assert runs[0].order == "all_at_once" and runs[0].tags == ["ablation"]
    assert varying_keys(runs) == ["anchor"]  # seed varies too, but seeds pool within a group


def test_report_csv_holds_hand_computed_means_and_sample_stds(sweep):
    paths = write_report(sweep)
    rows = {row["anchor"]: row for row in read_csv(paths["csv"])}
    assert set(rows) == {"image", "text"}
    image, text = rows["image"], rows["text"]
    # image seeds: trained means 35 and 39, emergent 11 and 15 -> sample std sqrt(8)
    assert float(image["trained/R@1_mean"]) == pytest.approx(37.0)
    assert float(image["trained/R@1_std"]) == pytest.approx(math.sqrt(8))
    assert float(image["emergent/R@1_mean"]) == pytest.approx(13.0)
    assert float(image["emergent/R@5_mean"]) == pytest.approx(18.0)
    assert float(image["emergent/mAP_mean"]) == pytest.approx(6.5)
    # text seeds: 45 and 51 trained, 21 and 27 emergent -> std sqrt(18); the failed seed is left out
    assert float(text["trained/R@1_mean"]) == pytest.approx(48.0)
    assert float(text["emergent/R@1_std"]) == pytest.approx(math.sqrt(18))
    assert (image["n_seeds"], text["n_seeds"], text["n_failed"]) == ("2", "2", "1")


def test_pairs_csv_has_per_pair_means_and_trained_flags(sweep):
    paths = write_report(sweep)
    pairs = {(row["group"], row["pair"]): row for row in read_csv(paths["pairs_csv"])}
    assert len(pairs) == 2 * 6
    emergent = pairs[("anchor=image", "audio->text")]  # base+2 over bases 10 and 14
    assert emergent["trained"] == "False"
    assert float(emergent["R@1_mean"]) == pytest.approx(14.0)
    assert float(emergent["R@1_std"]) == pytest.approx(math.sqrt(8))
    assert pairs[("anchor=text", "audio->text")]["trained"] == "True"


def test_markdown_lists_groups_stats_and_failed_runs(sweep):
    text = write_report(sweep)["md"].read_text()
    assert "| anchor | seeds | trained R@1 | emergent R@1 |" in text
    # no per-query files: a t interval over the 2 seeds, 37 ± t(0.975, 1) * sqrt(8) / sqrt(2) = 37 ± 25.4,
    # clipped at 0 (a percent); the text seeds 45, 51 -> 48 ± 12.706 * 3 = 48 ± 38.1
    assert "| image | 2 | 37.0 ± 2.8 [11.6, 62.4] | 13.0 ± 2.8 [0.0, 38.4] |" in text
    assert "| text | 2 (+1 failed) | 48.0 ± 4.2 [9.9, 86.1] | 24.0 ± 4.2 [0.0, 62.1] |" in text
    assert "Chance (random ranking): R@1 1.00, R@5 5.00, R@10 10.00, mAP 5.19." in text  # gallery of 100
    assert "## Failed runs" in text
    assert "- `4` (anchor=text seed=2): failed, no metrics.json" in text
    assert "14.0 ± 2.8 [0.0, 39.4] |" in text  # audio->text in the image group, emergent: no star
    assert "## Curriculum stages" in text


def test_figure_is_a_real_png(sweep, tmp_path):
    out = tmp_path / "out"
    paths = write_report(sweep, out_dir=out)
    assert all(p.parent == out for p in paths.values())
    with Image.open(paths["png"]) as png:
        assert png.format == "PNG" and png.width > 300 and png.height > 200
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries behind


def test_stage_curves_average_seeds_stage_by_stage(sweep):
    curves = stage_curves(collect_runs(sweep))
    assert list(curves) == ["anchor=image"]  # the text runs have no stage history
    first, second = curves["anchor=image"]
    # stage 1 scores base-5: trained base+20 -> (30 + 34) / 2; emergent base-4 -> (6 + 10) / 2
    assert first == pytest.approx((105.0, 32.0, 8.0))
    assert second == pytest.approx((205.0, 37.0, 13.0))


def test_one_seed_has_no_std(tmp_path):
    make_job(tmp_path, 0, {"anchor": "image", "seed": 0}, 10)
    make_job(tmp_path, 1, {"anchor": "text", "seed": 0}, 20)
    paths = write_report(tmp_path)
    row = read_csv(paths["csv"])[0]
    assert row["trained/R@1_mean"] == "35.0" and row["trained/R@1_std"] == ""
    assert "| image | 1 | 35.0 ± n/a | 11.0 ± n/a |" in paths["md"].read_text()


def test_groups_by_curriculum_order_and_multi_anchor(tmp_path):
    # a nested list is one stage adding several modalities at once
    for num, (order, seed) in enumerate(itertools.product(["[imu,[audio,depth]]", "[audio,imu]"], [0, 1])):
        extra = {"curriculum": {"name": "staged", "order": yaml.safe_load(order)}}
        overrides = {"anchor": "[text,image]", "curriculum.order": order, "seed": seed}
        make_job(tmp_path, num, overrides, 10 + num, config_extra=extra)
    # no curriculum.order in this failed job's config: its group comes from the override string
    make_job(tmp_path, 4, {"anchor": "[text,image]", "curriculum.order": "[imu,[audio,depth]]", "seed": 2}, None)
    runs = collect_runs(tmp_path)
    assert runs[0].anchor == "image+text"  # graph.modalities order, not the override's
    rows = summary_table(runs)
    groups = [(r["order"], r["n_seeds"], r["n_failed"]) for r in rows]
    assert groups == [("imu>audio+depth", 2, 1), ("audio>imu", 2, 0)]
    assert rows[1]["trained/R@1_mean"] == pytest.approx(10 + 2.5 + 25)  # bases 12 and 13


def test_runs_written_before_a_key_was_renamed_group_with_runs_written_after(tmp_path):
    """``data.scene.version`` became ``data.synthetic.version`` on 2026-12-04: in the config and the overrides alike."""
    old = make_job(
        tmp_path, 0, {"data.scene.version": 2, "seed": 0}, 10, config_extra={"data": {"scene": {"version": 2}}}
    )
    make_job(
        tmp_path, 1, {"data.synthetic.version": 2, "seed": 1}, 12, config_extra={"data": {"synthetic": {"version": 2}}}
    )
    assert yaml.safe_load((old / ".hydra" / "config.yaml").read_text())["data"] == {"scene": {"version": 2}}
    runs = collect_runs(tmp_path)
    assert [r.overrides for r in runs] == [{"data.synthetic.version": "2", "seed": str(s)} for s in (0, 1)]
    assert [r.config["data"] for r in runs] == [
        {"scene": {}, "synthetic": {"version": 2}},
        {"synthetic": {"version": 2}},
    ]
    assert [(r["n_seeds"], r["n_failed"]) for r in summary_table(runs)] == [(2, 0)]


def test_a_job_at_the_default_is_labelled_with_its_configs_value(tmp_path):
    """A sweep at ``data.synthetic.version=1`` reported beside default jobs: the default group is named by the
    value its jobs' configs hold, and ``--baseline`` can name it; keys no config holds as a scalar stay empty."""
    for num, seed in enumerate((0, 1)):
        make_job(tmp_path, num, {"data.synthetic.version": 1, "seed": seed, "experiment": "x"}, 10,
                 config_extra={"data": {"synthetic": {"version": 1}}})  # fmt: skip
        make_job(tmp_path, num + 2, {"seed": seed}, 12, config_extra={"data": {"synthetic": {"version": 2}}})
    runs = collect_runs(tmp_path)
    assert [group_label(k) for k in group_runs(runs)] == [
        "data.synthetic.version=1, experiment=x",
        "data.synthetic.version=2, experiment=",
    ]
    assert [(r["n_seeds"], r["n_failed"]) for r in summary_table(runs)] == [(2, 0), (2, 0)]


def test_summary_only_metrics_are_used_when_no_retrieval_table(tmp_path):
    for seed, value in enumerate([40.0, 44.0]):
        job = make_job(tmp_path, seed, {"seed": seed}, None)
        summary = {"trained/R@1": value, "emergent/R@1": value / 4}
        stages = [{"step": 50, "summary": {"trained/R@1": value / 2}}]
        (job / "metrics.json").write_text(json.dumps({"summary": summary, "stages": stages}))
    runs = collect_runs(tmp_path)
    (row,) = summary_table(runs)
    assert row["group"] == "all runs"
    assert (row["trained/R@1_mean"], row["emergent/R@1_mean"]) == pytest.approx((42.0, 10.5))
    assert "trained/R@5_mean" not in row  # no run has R@5
    ((step, trained, emergent),) = stage_curves(runs)["all runs"]
    assert (step, trained) == (50.0, 21.0) and math.isnan(emergent)


def test_summary_rows_as_columns_lines_up_with_rows(sweep):
    rows = summary_table(collect_runs(sweep))
    columns, data = summary_rows_as_columns(rows)
    assert columns[:2] == ["anchor", "group"] and len(set(columns)) == len(columns)
    assert [len(d) for d in data] == [len(columns)] * 2
    assert data[1][columns.index("trained/R@1_mean")] == pytest.approx(48.0)


def test_cli_prints_the_summary_and_writes_files(sweep, tmp_path, capsys):
    assert main([str(sweep), "--out", str(tmp_path / "r"), "--metric", "R@5"]) == 0
    out = capsys.readouterr().out
    assert "| image | 2 | 37.0 ± 2.8 [11.6, 62.4] |" in out
    assert "Per-pair R@5" in (tmp_path / "r" / "report.md").read_text()


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_cli_reports_a_bad_folder_on_one_line(tmp_path, capsys, make):
    target = tmp_path / "nowhere"
    if make == "empty":
        target.mkdir()
    assert main([str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(target) in err
    assert ("no such directory" if make == "missing" else "no runs found") in err


def test_cli_rejects_an_unknown_metric(sweep, capsys):
    assert main([str(sweep), "--metric", "R@3"]) == 2
    assert "R@3" in capsys.readouterr().err


def test_all_failed_still_writes_a_report_and_exits_1(tmp_path, capsys):
    make_job(tmp_path, 0, {"seed": 0}, None)
    make_job(tmp_path, 1, {"seed": 1}, None)
    assert main([str(tmp_path)]) == 1
    assert "all 2 jobs failed" in capsys.readouterr().err
    assert (tmp_path / "report.md").read_text().count(": failed, no metrics.json") == 2
    assert not (tmp_path / "report.png").exists()
    with pytest.raises(ReportError, match="no such directory"):
        collect_runs(tmp_path / "missing")


# ---------------------------------------------------------------- per-query files, intervals, comparisons

PAIRS = [f"{q}->{g}" for q, g in itertools.permutations(MODALITIES, 2)]


def per_query_job(root: Path, num: int, overrides: dict, values: dict, ids, extra: dict | None = None) -> Path:
    """A job whose metrics.json agrees with its per_query.npz: each pair's R@1 is 100 * the mean of its
    per-query values (`values`: pair -> (N,) in [0, 1]); image is the anchor (pairs touching it trained)."""
    job = make_job(root, num, overrides, None)
    retrieval = {
        pair: {"R@1": 100.0 * float(np.mean(v)), "trained": "image" in pair.split("->")} for pair, v in values.items()
    }
    metrics = {"retrieval": retrieval, "gallery_size": len(ids), "anchor": ["image"], **(extra or {})}
    (job / "metrics.json").write_text(json.dumps(metrics))
    arrays = {f"retrieval/{pair}/R@1": np.asarray(v, dtype=np.float32) for pair, v in values.items()}
    np.savez(job / "per_query.npz", ids=np.asarray(ids, dtype=np.int64), **arrays)
    return job


def noisy_values(rng: np.random.Generator, n: int, level: float) -> dict:
    return {pair: np.clip(rng.normal(level, 0.15, n), 0, 1) for pair in PAIRS}


def group_runs_of(root: Path, *variants: str) -> list[list]:
    runs = collect_runs(root)
    return [[r for r in runs if r.overrides["variant"] == v] for v in variants]


@pytest.fixture
def paired_sweep(tmp_path) -> Path:
    """Three groups x 3 seeds on the same 300 held-out ids per seed:
    `same` copies the baseline, `better` adds 0.1 +- 0.2 to every query (a planted +10 points),
    `noise` is drawn afresh around the baseline's level (no true difference)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "paired"
    num = 0
    for seed in range(3):
        ids = np.arange(300) + 1000 * seed
        base = noisy_values(rng, 300, 0.4 + 0.02 * seed)
        better = {p: np.clip(v + rng.normal(0.1, 0.2, 300), 0, 1) for p, v in base.items()}
        groups = {"base": base, "same": base, "better": better, "noise": noisy_values(rng, 300, 0.4 + 0.02 * seed)}
        for group, values in groups.items():
            per_query_job(root, num, {"variant": group, "seed": seed}, values, ids)
            num += 1
    return root


def test_two_level_bootstrap_with_one_seed_matches_scipy_percentile_bootstrap():
    from scipy import stats

    values = np.random.default_rng(3).random(2000)
    lo, hi = two_level_bootstrap([values], n_boot=4000)
    ref = stats.bootstrap((values,), np.mean, n_resamples=4000, method="percentile", random_state=1)
    assert lo == pytest.approx(ref.confidence_interval.low, abs=2e-3)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=2e-3)
    assert two_level_bootstrap([values], n_boot=500) == two_level_bootstrap([values], n_boot=500)  # seeded


def test_two_level_bootstrap_widens_with_seed_spread():
    rng = np.random.default_rng(4)
    agreeing = [rng.random(500) for _ in range(3)]
    spread = [v + shift for v, shift in zip(agreeing, (-0.2, 0.0, 0.2), strict=True)]
    lo_a, hi_a = two_level_bootstrap(agreeing)
    lo_s, hi_s = two_level_bootstrap(spread)
    assert hi_s - lo_s > 3 * (hi_a - lo_a)  # seed-to-seed variation is part of the interval
    with pytest.raises(ValueError, match="seed 1"):
        two_level_bootstrap([np.ones(3), np.ones((3, 2))])


def test_two_level_bootstrap_resamples_the_groups_of_a_job():
    from bindspace.report import bootstrap_many

    rng = np.random.default_rng(5)
    originals = [rng.random((n, 2)) for n in (200, 150, 180)]
    lo, hi = bootstrap_many(originals, n_boot=500)
    # One row per group, or no groups: the rows are resampled exactly as before.
    distinct = [np.arange(len(v)) for v in originals]
    assert all(np.array_equal(a, b) for a, b in zip(bootstrap_many(originals, 500, groups=distinct), (lo, hi)))
    # Each row held out three times (copies of one source, one group): resampling groups gives the
    # originals' interval (the same draws, over groups); resampling rows would be ~1/sqrt(3) as wide.
    copies = [np.repeat(v, 3, axis=0) for v in originals]
    labels = [np.repeat(np.arange(len(v)), 3) for v in originals]
    lo_g, hi_g = bootstrap_many(copies, n_boot=500, groups=labels)
    np.testing.assert_allclose(np.stack([lo_g, hi_g]), np.stack([lo, hi]), rtol=0, atol=1e-12)
    lo_1, hi_1 = bootstrap_many(originals[:1], n_boot=500)  # one seed: the query level alone
    lo_r, hi_r = bootstrap_many(copies[:1], n_boot=500)
    np.testing.assert_allclose((hi_r - lo_r) / (hi_1 - lo_1), 1 / np.sqrt(3), rtol=0.15)
    with pytest.raises(ValueError, match="seed 1: groups"):
        bootstrap_many(copies, n_boot=50, groups=[labels[0], labels[1][:-1], labels[2]])


def test_report_intervals_resample_the_groups_stored_in_per_query_files(tmp_path):
    rng = np.random.default_rng(6)
    roots = {"once": tmp_path / "once", "copied": tmp_path / "copied"}
    for seed in range(2):
        ids = np.arange(120) + 1000 * seed
        for num, variant in enumerate(("base", "other")):
            values = noisy_values(rng, 120, 0.4 + 0.1 * num)
            per_query_job(roots["once"], 2 * seed + num, {"variant": variant, "seed": seed}, values, ids)
            job = per_query_job(
                roots["copied"], 2 * seed + num, {"variant": variant, "seed": seed},
                {p: np.repeat(v, 2) for p, v in values.items()}, np.arange(240) + 1000 * seed,
            )  # fmt: skip
            with np.load(job / "per_query.npz") as npz:
                arrays = dict(npz)
            np.savez(job / "per_query.npz", groups=np.repeat(np.arange(120), 2), **arrays)
    keys = ["trained/R@1", "pair/image->text/R@1"]
    (base_o, other_o), (base_c, other_c) = (group_runs_of(roots[k], "base", "other") for k in ("once", "copied"))
    once, copied = group_stats(base_o, keys, 300), group_stats(base_c, keys, 300)
    for key in keys:
        assert copied[key].method == "2-level bootstrap"
        assert copied[key].lo == pytest.approx(once[key].lo, abs=1e-4)
        assert copied[key].hi == pytest.approx(once[key].hi, abs=1e-4)
    diff_o, diff_c = paired_differences(base_o, other_o, keys, 300), paired_differences(base_c, other_c, keys, 300)
    for key in keys:
        assert (diff_c[key].lo, diff_c[key].hi) == pytest.approx((diff_o[key].lo, diff_o[key].hi), abs=1e-4)


def test_seed_aggregation_uses_per_query_files(paired_sweep):
    runs = [r for r in collect_runs(paired_sweep) if r.overrides["variant"] == "better"]
    stats = group_stats(runs, ["trained/R@1", "emergent/R@1", "pair/image->text/R@1"])
    per_seed = [np.mean([np.mean(r.per_query()[f"retrieval/{p}/R@1"]) for p in PAIRS if "image" in p]) for r in runs]
    trained = stats["trained/R@1"]
    assert trained.method == "2-level bootstrap" and trained.n_seeds == 3
    assert trained.mean == pytest.approx(100 * np.mean(per_seed), abs=1e-4)
    assert trained.std == pytest.approx(100 * np.std(per_seed, ddof=1), abs=1e-4)
    assert trained.lo < trained.mean < trained.hi and trained.hi - trained.lo < 10
    rows = read_csv(write_report(paired_sweep, n_boot=300)["csv"])
    better = next(r for r in rows if r["variant"] == "better")
    assert better["interval"] == "2-level bootstrap"
    assert float(better["trained/R@1_lo"]) < float(better["trained/R@1_mean"]) < float(better["trained/R@1_hi"])
    assert float(better["chance/R@1"]) == pytest.approx(100 / 300)


def test_paired_comparison_resolves_a_planted_difference_and_not_identical_groups(paired_sweep):
    paths = write_report(paired_sweep, baseline="base", n_boot=500)
    rows = {(r["variant"], r["quantity"]): r for r in read_csv(paths["compare_csv"])}
    assert {r["baseline"] for r in rows.values()} == {"variant=base"}
    better = rows[("better", "trained/R@1")]
    assert 8.0 < float(better["diff"]) < 12.0  # planted +10 points, minus clipping at 1
    assert 0 < float(better["diff_lo"]) < float(better["diff"]) < float(better["diff_hi"])
    assert better["resolved"] == "True" and better["interval"] == "2-level bootstrap"
    assert (better["n_seeds"], better["n_queries"]) == ("3", "300")
    same = rows[("same", "trained/R@1")]
    assert float(same["diff_lo"]) == float(same["diff_hi"]) == 0.0 and same["resolved"] == "False"
    noise = rows[("noise", "emergent/R@1")]
    assert float(noise["diff_lo"]) < 0 < float(noise["diff_hi"]) and noise["resolved"] == "False"
    text = paths["md"].read_text()
    assert "Baseline: **variant=base**" in text and "**not resolved**" in text
    assert "2-level bootstrap**: every run" in text and "500 resamples, numpy seed 0" in text


def test_paired_comparison_matches_queries_by_sample_id(tmp_path):
    """The other group lists the same samples in another order and scores exactly 0.2 more on each."""
    rng = np.random.default_rng(5)
    for seed in range(2):
        ids = np.arange(100) + 500 * seed
        base = {p: rng.random(100) * 0.7 for p in PAIRS}
        order = rng.permutation(100)
        shifted = {p: v[order] + 0.2 for p, v in base.items()}
        per_query_job(tmp_path, 2 * seed, {"variant": "a", "seed": seed}, base, ids)
        per_query_job(tmp_path, 2 * seed + 1, {"variant": "b", "seed": seed}, shifted, ids[order])
    (diff,) = paired_differences(*group_runs_of(tmp_path, "a", "b"), ["trained/R@1"], n_boot=200).values()
    assert diff.diff == pytest.approx(20.0, abs=1e-4)
    assert diff.lo == pytest.approx(20.0, abs=1e-4) and diff.hi == pytest.approx(20.0, abs=1e-4)


def test_comparison_without_per_query_files_uses_seeds_and_one_seed_is_never_resolved(sweep, tmp_path):
    rows = read_csv(write_report(sweep)["compare_csv"])
    trained = next(r for r in rows if r["quantity"] == "trained/R@1")
    # seeds 0 and 1 paired: text - image = 45 - 35 and 51 - 39 -> 11 ± t(0.975, 1) * sqrt(2) / sqrt(2)
    assert float(trained["diff"]) == pytest.approx(11.0)
    assert float(trained["diff_lo"]) == pytest.approx(11.0 - 12.7062, abs=1e-3)
    assert trained["interval"] == "t over seeds" and trained["resolved"] == "False"
    make_job(tmp_path / "one", 0, {"anchor": "image", "seed": 0}, 10)
    make_job(tmp_path / "one", 1, {"anchor": "text", "seed": 0}, 90)
    (row, *_) = read_csv(write_report(tmp_path / "one")["compare_csv"])
    assert row["interval"] == "none" and row["resolved"] == "False" and row["diff_lo"] == ""


def test_baseline_option_picks_a_group_and_rejects_an_unknown_one(sweep, capsys):
    assert main([str(sweep), "--baseline", "text", "--n-boot", "50"]) == 0
    rows = read_csv(sweep / "report_compare.csv")
    assert {(r["group"], r["baseline"]) for r in rows} == {("anchor=image", "anchor=text")}
    assert main([str(sweep), "--baseline", "audio"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'audio'" in err and "anchor=image; anchor=text" in err


def test_budget_is_shown_only_when_recorded(tmp_path):
    for num, anchor in enumerate(["image", "text"]):
        job = make_job(tmp_path / "budget", num, {"anchor": anchor, "seed": 0}, 10 + num)
        make_job(tmp_path / "plain", num, {"anchor": anchor, "seed": 0}, 10 + num)
        metrics = json.loads((job / "metrics.json").read_text())
        metrics["budget"] = {"rule": "equal total steps", "steps": 600, "edge_steps": {"image|text": 600}}
        (job / "metrics.json").write_text(json.dumps(metrics))
    paths = write_report(tmp_path / "budget")
    summary = read_csv(paths["csv"])[0]
    assert summary["budget"] == "rule=equal total steps, steps=600"  # scalars; the full record beside it
    assert json.loads(summary["budget_detail"])["edge_steps"] == {"image|text": 600}
    assert read_csv(paths["compare_csv"])[0]["budget"] == "rule=equal total steps, steps=600"
    assert "| anchor | seeds | budget |" in paths["md"].read_text()
    plain = write_report(tmp_path / "plain")
    assert "budget" not in read_csv(plain["csv"])[0] and "budget" not in read_csv(plain["compare_csv"])[0]


def test_trainable_parameters_and_step_cost_are_columns_when_recorded(tmp_path):
    counts = {"image": 1000, "text": 40}
    for num, (arm, text_trunk) in enumerate([("frozen", 0), ("lora_r4", 36_864), ("lora_r4", 36_864)]):
        job = make_job(tmp_path / "arms", num, {"finetune": arm, "seed": num}, 10 + num)
        metrics = json.loads((job / "metrics.json").read_text())
        text = {"encoder": counts["text"] + text_trunk, "trunk": text_trunk}
        modalities = {"image": {"encoder": counts["image"], "trunk": 900}, "text": text}
        metrics["trainable_params"] = {"total": counts["image"] + text["encoder"] + 1, "modalities": modalities}
        metrics["step_cost"] = {"step_ms_median": 100.0 * (num + 1), "peak_rss_mib": 1000.0 + num}
        (job / "metrics.json").write_text(json.dumps(metrics))
    paths = write_report(tmp_path / "arms")
    rows = {row["group"]: row for row in read_csv(paths["csv"])}
    assert rows["finetune=frozen"]["trainable_params"] == "1041"
    assert rows["finetune=lora_r4"]["trainable_params"] == "37905"
    assert json.loads(rows["finetune=lora_r4"]["trainable_params_detail"])["text"]["trunk"] == 36_864
    assert float(rows["finetune=lora_r4"]["step_ms"]) == 250.0  # the median of its two runs' medians
    assert float(rows["finetune=lora_r4"]["peak_rss_mib"]) == 1002.0  # the larger run's
    md = paths["md"].read_text()
    assert "| finetune | seeds | trainable params | step ms | peak RSS MiB |" in md
    assert "| lora_r4 | 2 | 37,905 | 250 | 1002 |" in md
    make_job(tmp_path / "plain", 0, {"finetune": "frozen", "seed": 0}, 10)
    make_job(tmp_path / "plain", 1, {"finetune": "full", "seed": 0}, 11)
    plain = write_report(tmp_path / "plain")
    assert "trainable_params" not in read_csv(plain["csv"])[0] and "trainable params" not in plain["md"].read_text()


def test_a_malformed_per_query_file_is_one_line_naming_file_and_key(paired_sweep, capsys):
    job = paired_sweep / "0"
    np.savez(job / "per_query.npz", ids=np.arange(300), **{"retrieval/image->text/R@1": np.zeros(7, np.float32)})
    assert main([str(paired_sweep)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "per_query.npz" in err and "'retrieval/image->text/R@1'" in err


# ---------------------------------------------------------------- forgetting and transfer, chance, zero-shot


def stage_record(name: str, start: int, step: int, trained: list[str], values: dict[str, tuple[float, float]]) -> dict:
    """A stage-end record; `values` maps an edge "a|b" to (R@1 of a->b, R@1 of b->a)."""
    retrieval = {}
    for edge, (forward, backward) in values.items():
        a, b = edge.split("|")
        retrieval[f"{a}->{b}"] = {"R@1": forward, "trained": edge in trained}
        retrieval[f"{b}->{a}"] = {"R@1": backward, "trained": edge in trained}
    return {
        "name": name, "step": step, "start_step": start, "edges": trained[-1:], "trained_edges": trained,
        "frozen": [], "summary": {}, "retrieval": retrieval,
    }  # fmt: skip


def curriculum_metrics(offset: float) -> dict:
    """image|text trained from stage 1: 20 -> 30 -> 25 (a drop of 5 from its best); image|audio emergent at
    stage 1 (2), trained from stage 2: 15 -> 18. `offset` shifts one seed up and the other down."""
    both = ["image|text", "image|audio"]
    stages = [
        stage_record("image-text", 0, 100, both[:1], {both[0]: (18, 22), both[1]: (1, 3)}),
        stage_record("+audio", 100, 200, both, {both[0]: (30, 30), both[1]: (15, 15)}),
        stage_record("+depth", 200, 300, both, {both[0]: (24, 26), both[1]: (18, 18)}),
    ]
    for stage in stages:
        for entry in stage["retrieval"].values():
            entry["R@1"] += offset
    validation = [
        {
            "step": s,
            "stage": s // 100,
            "R@1": {"image->text": 10 + s / 10 + offset, "text->image": 10 + s / 10 + offset},
        }
        for s in (50, 100, 150, 200, 250, 300)
    ]
    final = stages[-1]["retrieval"]
    return {
        "retrieval": final, "gallery_size": 400, "edges": [["image", "text"], ["image", "audio"]], "stages": stages,
        "validation": validation, "chance": {"retrieval": {"R@1": 0.25, "R@5": 1.25}},
    }  # fmt: skip


def test_forgetting_table_marks_the_drop_and_the_emergent_stage():
    rows = forgetting_table([curriculum_metrics(+1.0), curriculum_metrics(-1.0)])
    cell = {(r["stage"], r["edge"]): r for r in rows}
    assert [(r["stage"], r["edge"]) for r in rows[:2]] == [(1, "image|text"), (1, "image|audio")]
    assert cell[(1, "image|text")]["R@1"] == pytest.approx(20.0)  # mean of 18 and 22, then of the seeds
    assert cell[(1, "image|text")]["std"] == pytest.approx(math.sqrt(2))  # seeds at 21 and 19
    assert cell[(3, "image|text")]["R@1"] == pytest.approx(25.0)
    assert cell[(3, "image|text")]["best_before"] == pytest.approx(30.0)
    assert cell[(3, "image|text")]["drop"] == pytest.approx(5.0)
    assert cell[(2, "image|text")]["drop"] == 0.0 and cell[(1, "image|text")]["drop"] is None
    assert not cell[(1, "image|audio")]["trained"] and cell[(2, "image|audio")]["trained"]
    assert cell[(3, "image|audio")]["drop"] == 0.0  # 15 -> 18: no forgetting
    header, body = forgetting_cells(rows)
    assert header == ["stage", "step", "image|text", "image|audio"]
    assert body == [
        ["1 image-text", "100", "20.0", "[2.0]"],
        ["2 +audio", "200", "30.0", "15.0"],
        ["3 +depth", "300", "25.0 (-5.0)", "18.0"],
    ]


def test_forgetting_table_of_one_run_and_of_runs_without_stages():
    (row, *_) = forgetting_table([curriculum_metrics(0.0)], metric="R@1")
    assert row["n_runs"] == 1 and row["std"] is None
    assert forgetting_table([{"retrieval": {}}]) == []


def test_report_writes_the_forgetting_table_and_figure(tmp_path):
    for seed, offset in enumerate([1.0, -1.0]):
        job = make_job(tmp_path, seed, {"seed": seed}, None)
        (job / "metrics.json").write_text(json.dumps(curriculum_metrics(offset)))
    paths = write_report(tmp_path)
    text = paths["md"].read_text()
    assert "## Forgetting and transfer (R@1, validation split)" in text
    assert "| 3 +depth | 300 | 25.0 (-5.0) | 18.0 |" in text and "| 1 image-text | 100 | 20.0 | [2.0] |" in text
    assert "Chance R@1 = 0.25 (from the test gallery; validation gallery size not recorded)" in text
    rows = read_csv(paths["forgetting_csv"])
    assert len(rows) == 6 and float(rows[4]["drop"]) == pytest.approx(5.0)
    with Image.open(paths["forgetting_png"]) as png:
        assert png.format == "PNG"


def test_validation_panel_draws_stage_starts_and_chance():
    from bindspace.report.figures import forgetting_figure

    metrics = [curriculum_metrics(1.0), curriculum_metrics(-1.0)]
    for m in metrics:  # a stage record that knows its own gallery gives the validation chance
        m["stages"][0]["gallery_size"] = 50
    panel = validation_panel(metrics)
    assert panel.source == "validation" and panel.boundaries == [100.0, 200.0]
    assert (panel.chance, panel.chance_note) == (2.0, "validation gallery")  # 100 * 1 / 50
    assert panel.curves["image|text"][0] == (50.0, pytest.approx(15.0))  # 10 + 50/10, seeds +-1
    assert panel.trained_from == {"image|text": 0.0}  # validation records here score image-text only
    (ax,) = [a for a in forgetting_figure({"all runs": panel}).axes if a.get_visible()]
    boundaries = [line.get_xdata()[0] for line in ax.lines if line.get_gid() == "stage-boundary"]
    (chance,) = [line for line in ax.lines if line.get_gid() == "chance"]
    assert boundaries == [100.0, 200.0] and list(chance.get_ydata()) == [2.0, 2.0]
    # no validation records: the stage-end tables are the curve, one point per stage
    for m in metrics:
        del m["validation"]
    stages_only = validation_panel(metrics)
    assert stages_only.source == "stages"
    assert stages_only.curves["image|text"] == [(100.0, 20.0), (200.0, 30.0), (300.0, 25.0)]
    assert stages_only.trained_from == {"image|text": 0.0, "image|audio": 100.0}


def test_chance_comes_from_metrics_json_when_present_else_from_the_gallery():
    assert chance_of({"gallery_size": 1000}, "R@10") == pytest.approx(1.0)
    assert chance_of({"gallery_size": 4}, "mAP") == pytest.approx(100 * (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    stored = {"gallery_size": 1000, "chance": {"retrieval": {"R@1": 0.3}, "retrieval_class": {"R@1": 6.25}}}
    assert chance_of(stored, "R@1") == 0.3  # the file wins over the closed form (e.g. duplicated items)
    assert chance_of(stored, "R@1", "retrieval_class") == 6.25
    assert chance_of({"data": {"classes": 16}}, "top1", "zero_shot") == 6.25
    assert (
        chance_of({"chance": {"zero_shot": {"audio": {"top5": 50.0}, "imu": {"top5": 50.0}}}}, "top5", "zero_shot")
        == 50.0
    )
    assert chance_of({}, "R@1") is None


def test_comparison_figure_draws_chance_on_the_test_bars():
    from bindspace.evaluation.plots import group_comparison_figure

    stats = {"anchor=image": {"trained": (37.0, 2.0, 30.0, 41.0)}, "anchor=text": {"trained": (48.0, None)}}
    fig = group_comparison_figure(stats, "R@1", chance=0.1)
    bars = fig.axes[0]
    (chance,) = [line for line in bars.lines if line.get_label() == "chance = 0.10"]
    assert list(chance.get_ydata()) == [0.1, 0.1]
    assert "test split" in bars.get_title() and "95% interval" in bars.get_ylabel()
    trained_errors = bars.collections[0]  # error bars in bar order: trained first
    assert tuple(trained_errors.get_segments()[0][:, 1]) == (30.0, 41.0)  # the interval, not ± std


def test_zero_shot_table_with_intervals_and_chance(tmp_path):
    rng = np.random.default_rng(6)
    for seed in range(2):
        ids = np.arange(160) + 1000 * seed
        values = {p: rng.random(160) for p in PAIRS}
        hits = {"audio": rng.random(160) < 0.5, "image": rng.random(160) < 0.25}
        zero_shot = {m: {"top1": 100.0 * h.mean(), "top5": 100.0} for m, h in hits.items()}
        job = per_query_job(
            tmp_path, seed, {"seed": seed}, values, ids, {"zero_shot": zero_shot, "data": {"classes": 16}}
        )
        arrays = dict(np.load(job / "per_query.npz"))
        arrays.update({f"zero_shot/{m}/top1": h.astype(np.float32) for m, h in hits.items()})
        np.savez(job / "per_query.npz", **arrays)
    paths = write_report(tmp_path, n_boot=400)
    rows = {(r["modality"], r["metric"]): r for r in read_csv(paths["zero_shot_csv"])}
    audio = rows[("audio", "top1")]
    assert audio["interval"] == "2-level bootstrap" and float(audio["chance"]) == 6.25
    assert float(audio["lo"]) < float(audio["mean"]) < float(audio["hi"])
    assert 35 < float(audio["mean"]) < 65 and audio["edge_trained"] == "False"  # audio-text is emergent here
    assert rows[("image", "top1")]["edge_trained"] == "True"  # image-text is a trained edge
    text = paths["md"].read_text()
    assert "## Zero-shot classification" in text and "chance = 100 / classes = 6.25" in text
    assert "test split" in text.split("## Zero-shot classification")[1].split("##")[0]


def test_stale_optional_outputs_are_removed(paired_sweep, tmp_path):
    out = tmp_path / "out"
    assert "compare_csv" in write_report(paired_sweep, out_dir=out, n_boot=50)
    single = tmp_path / "single"
    per_query_job(single, 0, {"seed": 0}, noisy_values(np.random.default_rng(7), 20, 0.5), np.arange(20))
    paths = write_report(single, out_dir=out, n_boot=50)
    assert "compare_csv" not in paths and not (out / "report_compare.csv").exists()
    assert not (out / "report_forgetting.png").exists()


def test_wandb_tables_line_up_with_the_report_files(paired_sweep):
    runs = collect_runs(paired_sweep)
    report = build_report(runs, baseline="base", n_boot=50)
    tables = wandb_tables(report)
    assert set(tables) == {"report/summary", "report/pairs", "report/compare"}  # no zero-shot, no stages here
    columns, data = tables["report/compare"]
    assert len(data) == len(report.comparison) and "diff_lo" in columns and "resolved" in columns


def test_baseline_named_by_one_value_when_the_sweep_varies_other_keys_too():
    from bindspace.report.compare import resolve_baseline

    groups = [
        (("curriculum", "all_at_once"), ("trainer.max_steps", "")),
        (("curriculum", "progressive"), ("trainer.max_steps", "")),
        (("curriculum", "progressive"), ("trainer.max_steps", "1000")),
    ]
    assert resolve_baseline(groups, "all_at_once") == groups[0]
    assert resolve_baseline(groups, "curriculum=all_at_once") == groups[0]
    with pytest.raises(ReportError, match="matches no group"):
        resolve_baseline(groups, "progressive")  # two groups: ambiguous


def test_linked_runs_from_other_sweeps_count_and_the_latest_link_does_not(tmp_path):
    """Sweeps are combined by linking their jobs into one folder; `latest` repeats a run of its own folder."""
    from bindspace.report.runs import _job_dirs

    for sweep in ("s0", "s1"):
        (tmp_path / sweep / "0").mkdir(parents=True)
        (tmp_path / sweep / "0" / "metrics.json").write_text("{}")
    combined = tmp_path / "combined"
    (combined / "own").mkdir(parents=True)
    (combined / "own" / "metrics.json").write_text("{}")
    for sweep in ("s0", "s1"):
        (combined / f"{sweep}-0").symlink_to(tmp_path / sweep / "0")
    (combined / "latest").symlink_to(combined / "own")
    assert sorted(p.name for p in _job_dirs(combined)) == ["own", "s0-0", "s1-0"]


def test_budget_written_before_batches_per_step_reads_in_todays_units(tmp_path):
    """A run from before budget.batches_per_step counted edge_steps in batches (k per step); beside a new
    run of the same budget the report shows one budget, not two."""
    new = {"steps": 8, "edge_steps": {"image|text": 8}, "pair_batches": 16, "global_batch": 4,
           "batches_per_step": 2, "schedule": "per_stage", "stage_steps": [8]}  # fmt: skip
    old = {k: v for k, v in new.items() if k != "batches_per_step"} | {"edge_steps": {"image|text": 16}}
    for num, budget in enumerate([old, new]):
        job = make_job(tmp_path, num, {"seed": num}, 10, config_extra={"trainer": {"accumulate_grad_batches": 2}})
        metrics = json.loads((job / "metrics.json").read_text())
        (job / "metrics.json").write_text(json.dumps(metrics | {"budget": budget}))
    runs = sorted(collect_runs(tmp_path), key=lambda r: r.path.name)
    assert recorded_budget(runs[0]) == new and recorded_budget(runs[1]) == new
    assert list(recorded_budget(runs[0])) == list(new)  # the same order: the same "k=v, ..." text
    assert budget_of(runs) == "steps=8, pair_batches=16, global_batch=4, batches_per_step=2, schedule=per_stage"
    # A record of another shape (no pair_batches) is shown as written.
    runs[0].metrics["budget"] = {"rule": "equal total steps", "steps": 600}
    assert recorded_budget(runs[0]) == {"rule": "equal total steps", "steps": 600}


def test_metrics_offered_and_accepted_are_scalars_only(tmp_path, capsys):
    """Intervals stored beside a metric (R@1_ci) are neither listed as available nor taken as --metric."""
    job = make_job(tmp_path / "multirun", 0, {"seed": 0}, 10)
    metrics = json.loads((job / "metrics.json").read_text())
    for entry in metrics["retrieval"].values():
        entry["R@1_ci"] = [entry["R@1"] - 1, entry["R@1"] + 1]
    metrics["summary"] = {"trained/R@1": 35.0, "trained/R@1_ci": [34.0, 36.0], "trained/note": "text"}
    (job / "metrics.json").write_text(json.dumps(metrics))
    assert main([str(tmp_path / "multirun"), "--metric", "R@2"]) == 2
    listed = capsys.readouterr().err.split("available: ")[1].strip().split(", ")
    assert listed == ["R@1", "R@5", "R@10", "mAP"]
    assert main([str(tmp_path / "multirun"), "--metric", "R@1_ci"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'R@1_ci'" in err and "available: R@1, R@5" in err
