"""Every experiment config gets a smoke run; a two-run multirun turns into a report table."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES

pytestmark = pytest.mark.slow
EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[1] / "configs" / "experiment").glob("*.yaml"))


def multirun(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bindspace.train", "-m", *TINY_OVERRIDES, *overrides, f"hydra.sweep.dir={tmp_path}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_smoke_run(tmp_path, experiment):
    """One job of each experiment's sweep (seed 0, its first value of every other swept key)."""
    proc = multirun(
        tmp_path,
        f"experiment={experiment}",
        "trainer.max_steps=4",
        "hydra.sweeper.params.seed=0",
        "curriculum.stage.steps=1" if "curriculum" in experiment else "hydra.sweeper.params.anchor=text",
        *(["hydra.sweeper.params.curriculum\\.order=[imu,thermal,depth,audio]"] if "curriculum" in experiment else []),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "0" / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["run"]["group"] == experiment


def test_two_run_multirun_produces_a_report(tmp_path):
    proc = multirun(
        tmp_path,
        "experiment=ablate_anchor",
        "trainer.max_steps=4",
        "hydra.sweeper.params.anchor=image,text",
        "hydra.sweeper.params.seed=0",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    anchors = [json.loads((tmp_path / str(i) / "metrics.json").read_text())["anchor"] for i in (0, 1)]
    assert anchors == [["image"], ["text"]]
    report = subprocess.run(
        [sys.executable, "-m", "bindspace.report", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert report.returncode == 0, report.stderr
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert sorted(r["anchor"] for r in rows) == ["image", "text"]
    for r in rows:  # one seed each: the mean is that run's own value
        run = next(
            i for i in (0, 1) if json.loads((tmp_path / str(i) / "metrics.json").read_text())["anchor"] == [r["anchor"]]
        )
        summary = json.loads((tmp_path / str(run) / "metrics.json").read_text())["summary"]
        assert float(r["emergent/R@1_mean"]) == pytest.approx(summary["emergent/R@1"], abs=0.01)
    assert (tmp_path / "report.png").stat().st_size > 1000
    assert "anchor" in (tmp_path / "report.md").read_text()
