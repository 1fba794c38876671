"""A relaunch trains on the data its checkpoint trained on, or stops: the settings that decide a synthetic run's
scenes (seed, ``data.synthetic.version``, ``data.scene.*``) are recorded in every checkpoint, and a resume with
others is refused before any compute, through the real CLI. The default renderer changed on 2026-12-04, so a
run started before and relaunched after would otherwise finish on other scenes, silently.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import TINY_OVERRIDES, compose_config, python_m

from bindspace.data.synthetic import DEFAULT_VERSION, scene_settings
from bindspace.train import run

pytestmark = pytest.mark.slow

GRAPH = ["graph.modalities=[image,audio]", "eval.final=false"]


def steps(n: int) -> list[str]:
    base = [o for o in TINY_OVERRIDES if not o.startswith(("trainer.max_steps", "checkpoint."))]
    return [*base, *GRAPH, f"trainer.max_steps={n}", "checkpoint.every_n_train_steps=2"]


def test_scene_settings_fill_defaults_and_skip_other_data():
    assert scene_settings({"data": {"name": "synthetic"}}) == {
        "seed": 0, "data.synthetic.version": DEFAULT_VERSION, "data.scene.num_classes": 16, "data.scene.noise": 1.0,
    }  # fmt: skip
    given = {"seed": 3, "data": {"name": "synthetic", "synthetic": {"version": 1}, "scene": {"noise": 0.5}}}
    assert scene_settings(given)["data.synthetic.version"] == 1 and scene_settings(given)["seed"] == 3
    assert scene_settings({"data": {"name": "manifest"}}) is None and scene_settings(None) is None


def test_a_relaunch_on_other_scenes_is_refused_and_the_checkpoint_kept(tmp_path):
    run_dir = tmp_path / "run"
    run(compose_config([*steps(2), "data.synthetic.version=1"], run_dir=str(run_dir)))
    last = run_dir / "checkpoints" / "last.ckpt"
    meta = torch.load(last, map_location="cpu", weights_only=True)["bindspace"]
    assert meta["training_data"] == {
        "seed": 0, "data.synthetic.version": 1, "data.scene.num_classes": 16, "data.scene.noise": 1.0,
    }  # fmt: skip
    before = last.read_bytes()
    # Relaunched with today's default renderer (2), as a run of 2026-12-03 relaunched after the change would be.
    proc = subprocess.run(
        [*python_m("bindspace.train"), *steps(4), f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("bindspace-train: config error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert f"data.synthetic.version is 1 in the checkpoint, {DEFAULT_VERSION} in this config" in line
    assert "relaunch with data.synthetic.version=1 to continue this run" in line
    assert last.read_bytes() == before
    assert "version: 1" in (run_dir / ".hydra" / "config.yaml").read_text()  # the run's record kept too
    # With the checkpoint's renderer it continues, to step 4.
    run(compose_config([*steps(4), "data.synthetic.version=1"], run_dir=str(run_dir)))
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 4


def test_a_checkpoint_without_the_record_resumes_with_a_warning(tmp_path, caplog):
    """Checkpoints written before the record cannot tell: version 1 was the default then, so a launch that renders
    another says how to continue on version 1."""
    run_dir = tmp_path / "run"
    run(compose_config([*steps(2), "data.synthetic.version=1"], run_dir=str(run_dir)))
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    del ckpt["bindspace"]["training_data"]
    torch.save(ckpt, last)
    with caplog.at_level(logging.WARNING, logger="bindspace.train"):
        run(compose_config(steps(3), run_dir=str(run_dir)))
    assert "records no training data settings" in caplog.text
    assert "relaunch with data.synthetic.version=1 to continue it on the same scenes" in caplog.text
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3


def test_a_malformed_record_is_refused(tmp_path):
    from bindspace.errors import ConfigError

    run_dir: Path = tmp_path / "run"
    run(compose_config(steps(2), run_dir=str(run_dir)))
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    ckpt["bindspace"]["training_data"] = {"seed": [0]}
    torch.save(ckpt, last)
    with pytest.raises(ConfigError, match=r"training_data'\] is not a mapping of numbers and strings$"):
        run(compose_config(steps(3), run_dir=str(run_dir)))
