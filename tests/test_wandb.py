"""wandb runs offline by default and its run folder holds the logged metrics and the stage heatmaps."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES, compose_config, python_m

from bindspace.train import run

pytestmark = pytest.mark.slow

# Two steps, a checkpoint at each, no validation or final evaluation: what a relaunch continues.
SHORT = ["logger=wandb", "trainer.log_every_n_steps=1", "eval.final=false", "+trainer.limit_val_batches=0",
         "checkpoint.every_n_train_steps=1"]  # fmt: skip


def offline_runs(run_dir: Path) -> list[str]:
    """The run id of every offline wandb run in a run folder, oldest first (wandb's folders are
    ``offline-run-<time>-<id>``, ``-<id>-1`` for a second one within the same second; each holds ``run-<id>.wandb``)."""
    folders = sorted((run_dir / "wandb").glob("offline-run-*"), key=lambda p: p.stat().st_mtime_ns)
    return [next(p.glob("run-*.wandb")).stem.removeprefix("run-") for p in folders]


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


def test_a_relaunch_that_resumes_continues_the_same_wandb_run(tmp_path, monkeypatch):
    """The same command again in a run folder resumes its last.ckpt and logs to the first launch's wandb run (it
    started a second wandb run: one training run's curves were split in two). The id is kept in the run folder
    (``wandb_run_id``). A launch that starts the folder over (``resume=never``) gets a new run.

    Offline, wandb ignores ``resume`` and writes a second ``offline-run-*`` folder under the same id, which
    ``wandb sync`` uploads to the same run (docs/reliability.md says what is and is not checked of that)."""
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline by default: nothing here dials out
    run(compose_config([*SHORT, "trainer.max_steps=2"], run_dir=str(tmp_path)))
    run(compose_config([*SHORT, "trainer.max_steps=4"], run_dir=str(tmp_path)))  # resumes at step 2
    ids = offline_runs(tmp_path)
    assert len(ids) == 2 and ids[1] == ids[0], f"the relaunch logged to another wandb run: {ids}"
    first = ids[0]
    assert (tmp_path / "wandb_run_id").read_text().strip() == first
    resumed = sorted((tmp_path / "wandb").glob(f"offline-run-*-{first}*"), key=lambda p: p.stat().st_mtime_ns)[-1]
    assert b"train/loss" in next(resumed.glob("*.wandb")).read_bytes()  # the resumed steps went there

    run(compose_config([*SHORT, "trainer.max_steps=2", "resume=never"], run_dir=str(tmp_path)))
    ids = offline_runs(tmp_path)
    assert len(ids) == 3 and ids[2] != first, "a run started over continued the old wandb run"
    assert (tmp_path / "wandb_run_id").read_text().strip() == ids[2]


def test_under_ddp_only_rank_0_creates_the_wandb_run_and_a_relaunch_continues_it(tmp_path):
    """2 gloo ranks through the CLI: one wandb run per launch (rank 1 creates none and writes no id), and the
    relaunch that resumes logs to the first launch's run."""
    base = [*(o for o in TINY_OVERRIDES if not o.startswith(("logger=", "data.batch_size", "trainer.max_steps"))),
            *SHORT, "trainer=ddp", "trainer.devices=2", "data.batch_size=4", f"hydra.run.dir={tmp_path}"]  # fmt: skip

    def launch(steps: int) -> None:
        proc = subprocess.run([*python_m("bindspace.train"), *base, f"trainer.max_steps={steps}"],
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]

    launch(2)
    assert len(offline_runs(tmp_path)) == 1
    launch(4)
    ids = offline_runs(tmp_path)
    assert len(ids) == 2 and ids[1] == ids[0], f"one wandb run per launch and rank 0's only, the same: {ids}"
    assert (tmp_path / "wandb_run_id").read_text().strip() == ids[0]
