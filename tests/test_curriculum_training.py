"""The curriculum inside real training runs: stage switches, freezing, history, exact resume."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose_config

from bindspace.train import run

pytestmark = pytest.mark.slow

# Stages of 3 steps: image-text (1-3), +audio (4-6), +depth+thermal (7-9), +imu (10-12).
PROGRESSIVE = [
    "curriculum=progressive",
    "curriculum.stage.steps=3",
    "curriculum.stage.warmup_steps=2",
    "trainer.max_steps=12",
    "trainer.val_check_interval=6",
    "checkpoint.every_n_train_steps=1",
    "data.batch_size=4",
]


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full")
    metrics = run(compose_config([*PROGRESSIVE, "curriculum.stage.freeze=[anchor]"], run_dir=str(run_dir)))
    return run_dir, metrics


def test_stage_history_in_metrics(uninterrupted):
    run_dir, _ = uninterrupted
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    stages = on_disk["stages"]
    assert [s["name"] for s in stages] == ["image-text", "+audio", "+depth+thermal", "+imu"]
    assert [s["step"] for s in stages] == [3, 6, 9, 12]
    assert stages[0]["edges"] == ["image|text"] and len(stages[3]["edges"]) == 5
    # Trained flags follow the stage: audio<->image is emergent at the end of stage 0, trained after.
    assert stages[0]["retrieval"]["audio->image"]["trained"] is False
    assert stages[1]["retrieval"]["audio->image"]["trained"] is True
    assert all(s["frozen"] == ["image"] for s in stages)


def test_frozen_anchor_never_moves_and_new_modalities_wait_their_stage(uninterrupted):
    run_dir, _ = uninterrupted
    ckpts = run_dir / "checkpoints"
    start, after_stage0, end = (weights(ckpts / f"step{s:06d}.ckpt") for s in (1, 3, 12))
    trunk = "model.trunks.image.blocks.0.mlp.fc1.weight"
    torch.testing.assert_close(start[trunk], end[trunk], rtol=0, atol=0)
    audio = "model.trunks.audio.blocks.0.mlp.fc1.weight"
    torch.testing.assert_close(start[audio], after_stage0[audio], rtol=0, atol=0)  # audio idle in stage 0
    assert (after_stage0[audio] - end[audio]).abs().max() > 0  # and trained once added
    text = "model.trunks.text.blocks.0.mlp.fc1.weight"
    assert (start[text] - after_stage0[text]).abs().max() > 0


@pytest.mark.parametrize("resume_step", [2, 3, 5])  # inside stage 0, exactly at a boundary, inside stage 1
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(uninterrupted, tmp_path, resume_step):
    run_dir, metrics = uninterrupted
    ckpt = run_dir / "checkpoints" / f"step{resume_step:06d}.ckpt"
    resumed = run(
        compose_config([*PROGRESSIVE, "curriculum.stage.freeze=[anchor]", f"ckpt_path={ckpt}"], run_dir=str(tmp_path))
    )
    a, b = weights(run_dir / "checkpoints" / "last.ckpt"), weights(tmp_path / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{k} differs after resuming at {resume_step}")
    # The history recorded before the interruption travels in the checkpoint.
    assert [s["step"] for s in resumed["stages"]] == [3, 6, 9, 12]
    assert resumed["retrieval"]["audio->text"]["R@1"] == pytest.approx(metrics["retrieval"]["audio->text"]["R@1"])


def test_plateau_ends_a_stage_in_a_real_run(tmp_path):
    # min_delta is unreachable, so the second validation (after step 4) counts as "no improvement"
    # and, with patience 1, ends the first stage at the next step boundary (5), well before its cap.
    plateau = "{metric: val/mean_R@1, patience: 1, min_delta: 1000, max_steps: 50}"
    stages = f"[{{name: a, edges: [[image,text]], plateau: {plateau}}}, {{name: b, edges: all}}]"
    metrics = run(
        compose_config(
            [f"curriculum.stages={stages}", "trainer.max_steps=8", "trainer.val_check_interval=2"],
            run_dir=str(tmp_path),
        )
    )
    assert [(s["name"], s["step"]) for s in metrics["stages"]] == [("a", 5), ("b", 8)]
