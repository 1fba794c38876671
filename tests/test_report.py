"""bindspace-report on hand-made multirun folders whose means and stds are known in advance."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import pytest
import yaml
from PIL import Image

from bindspace.report import (
    ReportError,
    collect_runs,
    main,
    stage_curves,
    summary_rows_as_columns,
    summary_table,
    varying_keys,
    write_report,
)

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
    assert "| image | 2 | 37.0 ± 2.8 | 13.0 ± 2.8 |" in text
    assert "| text | 2 (+1 failed) | 48.0 ± 4.2 | 24.0 ± 4.2 |" in text
    assert "## Failed runs" in text
    assert "- `4` (anchor=text seed=2): failed, no metrics.json" in text
    assert "14.0 ± 2.8 |" in text  # audio->text in the image group, emergent: no star
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
    assert "| image | 2 | 37.0 ± 2.8 |" in out
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
