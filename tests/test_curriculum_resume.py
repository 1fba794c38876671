"""Curriculum x resume: a run that stops mid-stage and is relaunched with more steps records the stage once,
where it really ended (found by training a plugin modality under DDP with a progressive curriculum)."""

from __future__ import annotations

import json

import pytest
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
