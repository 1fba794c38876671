"""wandb runs offline by default and its run folder holds the logged metrics and the stage heatmaps."""

from __future__ import annotations

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
            "curriculum.stage.warmup_steps=1",
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
    # wandb's offline record (a protobuf log, synced later by `wandb sync`) holds the history,
    # summary, config and run metadata; the names logged appear in it verbatim.
    record = next(runs[0].glob("*.wandb")).read_bytes()
    logged = (b"train/loss", b"stage", b"stage/trained/R@1", b"test/emergent/R@1", b"retrieval/heatmap",
              b"val/R@1/image|audio", b"curriculum/forgetting", b"curriculum/validation_R@1")  # fmt: skip
    for key in logged:
        assert key in record, f"{key!r} was not logged"
    for text in (b"anchor=image", b"seed=7", b"test_group", b"progressive"):  # tags, group, config
        assert text in record, f"{text!r} missing from the run record"
    images = sorted((runs[0] / "files" / "media" / "images").rglob("*.png"))
    heatmaps = [p for p in images if "heatmap" in str(p)]
    assert len(heatmaps) == 4, f"one heatmap per stage reached (4 of 5 in 8 steps), got {heatmaps}"
    assert len([p for p in images if "validation" in str(p)]) == 1  # the forgetting figure at the end
    assert all(p.stat().st_size > 5000 for p in images)
    tables = list((runs[0] / "files" / "media" / "table").rglob("*.json"))
    assert any("forgetting" in str(p) for p in tables), tables


def test_a_failed_run_still_closes_wandb(tmp_path, monkeypatch):
    import wandb

    cfg = compose_config(["logger=wandb", "trainer.max_steps=2"], run_dir=str(tmp_path))

    def boom(*args, **kwargs):
        raise RuntimeError("planted failure")

    monkeypatch.setattr("bindspace.training.pipeline.final_metrics", boom)
    with pytest.raises(RuntimeError, match="planted failure"):
        run(cfg)
    assert wandb.run is None  # finished, so the next job of a multirun can start its own run
