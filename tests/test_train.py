"""The real Hydra entry point, composed from the shipped configs and shrunk to seconds."""

from __future__ import annotations

import csv
import json
import logging
import math
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
from conftest import TINY_OVERRIDES, compose_config, python_m

from bindspace.train import run

pytestmark = pytest.mark.slow


def read_losses(run_dir: Path) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


def test_train_loss_falls_and_writes_results(tmp_path):
    # Audio and IMU break the initial symmetry of a from-scratch contrastive model within a few dozen
    # steps (image-heavy edges need hundreds), so this short run trains those two edges.
    cfg = compose_config(
        [
            "logger=csv",
            "graph.edges=[[image,audio],[audio,imu]]",
            # the tiny preset's own audio and IMU geometry (the test defaults shrink them further)
            "modalities.audio.input.clip_seconds=1.0",
            "modalities.audio.input.num_mel_bins=64",
            "modalities.audio.input.target_frames=96",
            "modalities.imu.input.length=200",
            "trainer.max_steps=50",
            "trainer.log_every_n_steps=1",
            "trainer.val_check_interval=25",
            "data.batch_size=32",
            "optim.lr=2e-3",
            "optim.warmup_steps=5",
        ],
        run_dir=str(tmp_path),
    )
    metrics = run(cfg)
    losses = read_losses(tmp_path)
    assert len(losses) >= 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    chance = 2 * math.log(32)  # two edges, 32 pairs each: the loss of a model that knows nothing
    assert last < first - 0.3 and last < chance - 0.2, f"loss did not fall: {first:.3f} -> {last:.3f}"

    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["steps"] == 50 and on_disk["anchor"] == ["image"]
    assert on_disk["gallery_size"] == 48
    assert on_disk["edges"] == [["image", "audio"], ["audio", "imu"]]
    assert len(on_disk["retrieval"]) == 6  # every ordered pair of the three graph modalities
    cell = on_disk["retrieval"]["image->imu"]
    assert cell["trained"] is False and set(cell) >= {"R@1", "R@5", "R@10"}
    assert on_disk["retrieval"]["imu->audio"]["trained"] is True
    assert set(on_disk["modality_gap"]) == {"image|audio", "image|imu", "audio|imu"}
    assert on_disk["zero_shot"] == {}  # no text encoder in this graph: nothing to prompt
    assert metrics["summary"] == on_disk["summary"]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "retrieval.txt").read_text().count("*") >= 4


def test_resume_from_checkpoint_continues_at_its_step(tmp_path):
    first = tmp_path / "a"
    run(compose_config(["trainer.max_steps=4"], run_dir=str(first)))
    ckpt = first / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 4
    resumed = tmp_path / "b"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = run(compose_config(["trainer.max_steps=6", f"ckpt_path={ckpt}"], run_dir=str(resumed)))
    assert metrics["steps"] == 6
    # Step 4 is mid-epoch; the step-indexed loader resumes exactly, and says so to Lightning (StepLoader).
    assert not [w for w in caught if "dataloader is not resumable" in str(w.message)]


def test_resume_with_gradient_accumulation_gives_the_uninterrupted_weights(tmp_path, caplog):
    """A step of ``trainer.accumulate_grad_batches=k`` takes k batches of the step loader; a resumed run
    started the loader at the global step instead of k times it, training on batches again. The start-up
    says once that accumulation does not add negatives (each batch's loss contrasts its own 8 pairs)."""
    acc = ["+trainer.accumulate_grad_batches=2", "trainer.max_steps=4", "checkpoint.every_n_train_steps=2",
           "trainer.val_check_interval=8", "graph.modalities=[image,text]"]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="bindspace.train"):
        run(compose_config(acc, run_dir=str(tmp_path / "a")))
    notes = [r.getMessage() for r in caplog.records if "accumulate_grad_batches=2" in r.getMessage()]
    assert len(notes) == 1 and "sees only its own 8 pairs per edge" in notes[0] and "not 16" in notes[0]
    ckpt = tmp_path / "a" / "checkpoints" / "step000002.ckpt"
    run(compose_config([*acc, f"ckpt_path={ckpt}"], run_dir=str(tmp_path / "b")))
    a, b = (
        torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        for d in (tmp_path / "a", tmp_path / "b")
    )
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k} differs after resuming at step 2")


def test_each_batch_of_an_accumulated_step_draws_its_own_dropout(tmp_path, monkeypatch):
    """Dropout and drop path draw from a generator seeded per training batch (the loader's item: the global step
    times ``trainer.accumulate_grad_batches`` plus the batch within the step), so the k batches of a step draw
    different masks and a resumed run replays them. It was seeded by the step alone: with k=2 both batches of a
    step drew the same masks (row i of each dropped together). One batch per step is seeded as before."""
    from bindspace.training.module import AlignmentModule

    states, original = [], AlignmentModule.training_step

    def recorded(self, batch, batch_idx):
        states.append(torch.random.get_rng_state())
        return original(self, batch, batch_idx)

    monkeypatch.setattr(AlignmentModule, "training_step", recorded)
    base = ["graph.modalities=[image,imu]", "trainer.max_steps=2", "eval.final=false", "+trainer.limit_val_batches=0"]
    run(compose_config([*base, "+trainer.accumulate_grad_batches=2"], run_dir=str(tmp_path / "k2")))
    accumulated = states[:]
    assert len(accumulated) == 4 and len({bytes(s.numpy()) for s in accumulated}) == 4
    states.clear()
    run(compose_config([*base, "trainer.max_steps=4"], run_dir=str(tmp_path / "k1")))
    for a, b in zip(accumulated, states, strict=True):  # batch b draws as step b of a run without accumulation
        assert torch.equal(a, b)


def test_ddp_on_cpu_with_two_processes(tmp_path):
    """trainer=ddp runs Lightning's DDP (gloo on CPU) in 2 processes through the real CLI."""
    tiny = [o for o in TINY_OVERRIDES if not o.startswith("trainer.")]
    proc = subprocess.run(
        [*python_m("bindspace.train"), *tiny, "trainer=ddp", "trainer.devices=2", "trainer.max_steps=3",
         "trainer.val_check_interval=3", "trainer.enable_progress_bar=false", "data.batch_size=4",
         f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 3


def _module(overrides: list[str]):
    from omegaconf import OmegaConf

    from bindspace.config import build_run_spec
    from bindspace.training.module import AlignmentModule

    spec = build_run_spec(OmegaConf.to_container(compose_config(overrides), resolve=True))
    return AlignmentModule(spec.build_model(), spec.build_loss(), spec.edges, spec.optim)


def test_frozen_parts_in_eval_mode_get_one_line_not_lightnings_warning():
    import warnings

    from lightning.pytorch.utilities.warnings import PossibleUserWarning

    from bindspace.train import _eval_mode_by_design, _fit_notes

    lightning_says = "Found 12 module(s) in eval mode at the start of training. This may lead to unexpected behavior"
    assert _eval_mode_by_design(_module(["graph.modalities=[image,text]"])) is None  # nothing frozen
    frozen = _module(["graph.modalities=[image,text]", "modalities.image.trunk.freeze=true"])
    assert _eval_mode_by_design(frozen) == {"image": "preprocessor/trunk"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _fit_notes(frozen):
            warnings.warn(lightning_says, PossibleUserWarning, stacklevel=1)
    assert not caught
    # A module in eval mode that is not frozen by design (a user's encoder switched off) keeps the warning.
    head = frozen.model.heads["text"]
    head.train = lambda mode=True: torch.nn.Module.train(head, False)
    assert _eval_mode_by_design(frozen) is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _fit_notes(frozen):
            warnings.warn(lightning_says, PossibleUserWarning, stacklevel=1)
    assert len(caught) == 1


def test_the_step_progress_bar_counts_to_max_steps_after_a_resume():
    # One long epoch: a run resumed at step 12 of 14 continues the epoch's batch count at 13, so the bar's
    # total must be max_steps (Lightning's default, the remaining 2 steps, printed "14/2").
    from types import SimpleNamespace

    from bindspace.train import step_progress_bar

    bar = step_progress_bar()
    if bar is None:
        pytest.skip("rich is not installed")
    bar._trainer = SimpleNamespace(max_epochs=-1, max_steps=14, global_step=12, num_training_batches=2)
    assert bar.total_train_batches == 14
    bar._trainer = SimpleNamespace(max_epochs=-1, max_steps=14, global_step=0, num_training_batches=14)
    assert bar.total_train_batches == 14
