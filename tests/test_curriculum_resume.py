"""Curriculum x resume: a run that stops mid-stage and is relaunched with more steps records the stage once,
where it really ended (found by training a plugin modality under DDP with a progressive curriculum)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose_config

from bindspace.train import run

pytestmark = pytest.mark.slow

# Stages of 3 steps: image-text (1-3), +audio (4-6); the first launch stops at step 4, inside +audio.
TWO_STAGES = [
    "curriculum=progressive",
    "curriculum.order=[audio]",
    "graph.modalities=[image,text,audio]",
    "curriculum.stage.steps=3",
    "curriculum.stage.warmup_steps=1",
    "trainer.val_check_interval=3",
    "checkpoint.every_n_train_steps=2",
    "data.batch_size=4",
]


def test_a_stage_cut_by_the_end_of_a_run_is_recorded_where_it_really_ends(tmp_path):
    first = run(compose_config([*TWO_STAGES, "trainer.max_steps=4"], run_dir=str(tmp_path)))
    assert [(s["name"], s["step"], s["end"]) for s in first["stages"]] == [
        ("image-text", 3, "stage"),
        ("+audio", 4, "run"),
    ]
    # Relaunched into the same folder with more steps: resumes at 4 and finishes the stage at 6.
    second = run(compose_config([*TWO_STAGES, "trainer.max_steps=6"], run_dir=str(tmp_path)))
    stages = [(s["name"], s["step"], s["end"]) for s in second["stages"]]
    # The last stage has no length of its own: it always ends with the run ("run"), and now at step 6.
    assert stages == [("image-text", 3, "stage"), ("+audio", 6, "run")], stages
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert [s["step"] for s in on_disk["stages"]] == [3, 6] and on_disk["steps"] == 6
    assert on_disk["budget"]["stage_steps"] == [3, 3]


# A plateau stage that ends after step 5: the validation after step 4 is its first without improvement, and the
# curriculum acts on it at the end of the next step.
PLATEAU = "{metric: val/mean_R@1, patience: 1, min_delta: 1000, max_steps: 50}"
PLATEAU_STAGES = [
    f"curriculum.stages=[{{name: a, edges: [[image,text]], plateau: {PLATEAU}}}, {{name: b, edges: all}}]",
    "graph.modalities=[image,text,audio]",
    "curriculum.continual.method=distill",
    "trainer.val_check_interval=2",
    "checkpoint.every_n_train_steps=1",
    "eval.final=false",
    "data.batch_size=4",
]


@pytest.fixture(scope="module")
def plateau_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("plateau")
    metrics = run(compose_config([*PLATEAU_STAGES, "trainer.max_steps=7"], run_dir=str(run_dir)))
    assert [(s["name"], s["start_step"], s["step"]) for s in metrics["stages"]] == [("a", 0, 5), ("b", 5, 7)]
    return run_dir


@pytest.mark.parametrize("cut", [4, 5])
def test_a_run_stopped_where_or_just_before_its_plateau_stage_ends_relaunches_as_uninterrupted(
    tmp_path, plateau_run, cut
):
    """Cut by ``trainer.max_steps`` at 5, where the stage ends, the run recorded the stage's end but did not start
    the next one, and the relaunch trained step 6 on the ended stage (stage b started at 6). Cut at 4, the
    validation after step 4 already counts the plateau, yet the stage ends after step 5, as without the cut."""
    run(compose_config([*PLATEAU_STAGES, f"trainer.max_steps={cut}"], run_dir=str(tmp_path)))
    resumed = run(compose_config([*PLATEAU_STAGES, "trainer.max_steps=7"], run_dir=str(tmp_path)))
    assert [(s["name"], s["start_step"], s["step"], s["end"]) for s in resumed["stages"]] == [
        ("a", 0, 5, "stage"),
        ("b", 5, 7, "run"),
    ]
    a, b = (
        torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
        for d in (plateau_run, tmp_path)
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_relaunching_a_finished_frozen_run_reports_what_its_last_stage_trained(tmp_path):
    """The same command again in a finished run's folder resumes at max_steps, trains nothing and evaluates
    again. Lightning then skips on_train_start, where the restored stage's freezing was applied, so
    metrics.json listed every encoder as trainable (image 0 -> 512512 parameters, found by SIGKILL tests
    relaunching a run killed while writing its results). The stage is applied at the end of fit too."""
    overrides = [*TWO_STAGES, "curriculum=progressive_frozen", "trainer.max_steps=6"]
    first = run(compose_config(overrides, run_dir=str(tmp_path)))
    assert first["trainable_params"]["modalities"]["image"]["encoder"] == 0  # frozen: the anchor, in +audio
    again = run(compose_config(overrides, run_dir=str(tmp_path)))
    assert again["steps"] == 6
    assert again["trainable_params"] == first["trainable_params"]
    assert again["budget"] == first["budget"] and again["stages"] == first["stages"]
