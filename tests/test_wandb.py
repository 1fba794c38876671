"""wandb runs offline by default and its run folder holds the logged metrics and the stage heatmaps."""

from __future__ import annotations

import json

import pytest
from conftest import compose_config

from bindspace.train import run

pytestmark = pytest.mark.slow


def test_offline_run_folder_holds_metrics_and_heatmaps(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose_config(
        [
            "logger=wandb",
            "curriculum=progressive",
            "curriculum.stage.steps=2",
            "trainer.max_steps=8",
            "trainer.log_every_n_steps=1",
            "logger.group=test_group",
            "seed=7",
        ],
        run_dir=str(tmp_path),
    )
    run(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "expected exactly one offline run folder (offline mode, no network)"
    files = runs[0] / "files"
    summary = json.loads((files / "wandb-summary.json").read_text())
    assert {"train/loss", "stage", "test/emergent/R@1"} <= set(summary)
    assert summary["stage"] == 3
    heatmaps = sorted((files / "media" / "images").rglob("*.png"))
    assert len(heatmaps) == 4, f"one heatmap per stage, got {heatmaps}"
    config = (files / "config.yaml").read_text()
    assert "curriculum" in config and "progressive" in config
    binary = next(runs[0].glob("*.wandb")).read_bytes()
    for tag in (b"anchor=image", b"seed=7", b"test_group"):
        assert tag in binary, f"{tag!r} missing from the run record"


def test_a_failed_run_still_closes_wandb(tmp_path, monkeypatch):
    import wandb

    cfg = compose_config(["logger=wandb", "trainer.max_steps=2"], run_dir=str(tmp_path))

    def boom(*args, **kwargs):
        raise RuntimeError("planted failure")

    monkeypatch.setattr("bindspace.train.final_metrics", boom)
    with pytest.raises(RuntimeError, match="planted failure"):
        run(cfg)
    assert wandb.run is None  # finished, so the next job of a multirun can start its own run
