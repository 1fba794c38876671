"""SIGKILL at a chosen write, then the same command again: the run ends as the uninterrupted one does.

SIGTERM is handled (tests/test_reliability.py); SIGKILL (the OOM killer, a node's kill after the grace
period) is not: what is on disk is all a relaunch has. ``tests/kill_shim/sitecustomize.py``, put on the
child's ``PYTHONPATH``, kills the real ``bindspace-train`` process right after (or just before) the n-th
atomic write onto a given file name; nothing in bindspace knows about it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import TINY_OVERRIDES, python_m
from test_curriculum_resume import PLATEAU_STAGES

pytestmark = pytest.mark.slow

SHIM = Path(__file__).parent / "kill_shim"
TINY = [o for o in TINY_OVERRIDES if not o.startswith(("trainer.max_steps", "checkpoint.", "trainer.val_check"))]
BASE = [*TINY, "graph.edges=[[image,audio],[audio,imu]]"]


def launch(
    run_dir: Path, overrides: list[str], kill: str | None = None, base: list[str] = BASE
) -> subprocess.CompletedProcess:
    """``python -m bindspace.train`` into ``run_dir``; ``kill``: ``<file name>:<n>[:before]`` (see the shim)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SHIM), os.environ.get("PYTHONPATH")]))}
    env.pop("BINDSPACE_KILL_AT", None)
    if kill is not None:
        env["BINDSPACE_KILL_AT"] = kill
    return subprocess.run(
        [*python_m("bindspace.train"), *base, *overrides, f"hydra.run.dir={run_dir}"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def killed_then_relaunched(run_dir: Path, overrides: list[str], kill: str, base: list[str] = BASE) -> dict:
    first = launch(run_dir, overrides, kill, base)
    assert first.returncode == -9, f"not killed at {kill}: exit {first.returncode}\n{first.stderr[-2000:]}"
    again = launch(run_dir, overrides, base=base)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not list(run_dir.rglob("*.tmp"))
    return json.loads((run_dir / "metrics.json").read_text())


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_checkpoint(a: Path, b: Path) -> None:
    x, y = load(a), load(b)
    assert x["global_step"] == y["global_step"], (a.name, x["global_step"], y["global_step"])
    assert x["state_dict"].keys() == y["state_dict"].keys()
    moved = [k for k, v in x["state_dict"].items() if not torch.equal(v, y["state_dict"][k])]
    assert not moved, f"{a.name}: {moved[:3]}"


# Validation every 4 steps with the step checkpoints, early stopping that keeps step 4 (min_delta 100: nothing
# improves on the first validation) and stops at step 8.
STOPPING = [
    "trainer.max_steps=40",
    "trainer.val_check_interval=4",
    "checkpoint.every_n_train_steps=4",
    "early_stopping={metric: val/mean_R@1, patience: 1, min_delta: 100}",
    "eval.final=false",
]


@pytest.fixture(scope="module")
def stopping(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    done = launch(run_dir, STOPPING)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["early_stopping"]["best_step"], metrics["early_stopping"]["stopped_step"]) == (4, 8)
    return run_dir, metrics


# best.ckpt:1 -- killed after the validation of step 4 wrote best.ckpt, before last.ckpt says so;
# best.ckpt:1:before -- killed during that validation (best.ckpt's temporary written, not renamed).
@pytest.mark.parametrize("kill", ["best.ckpt:1", "best.ckpt:1:before"])
def test_a_run_killed_during_a_validation_resumes_to_the_same_best_and_stop(tmp_path, stopping, kill):
    # The step checkpoint of step 4 was written before its validation: the relaunch resumed from it with no best
    # (a resume does not validate its step again), took step 8 as the best and stopped at step 12.
    reference, expected = stopping
    run_dir = tmp_path / "run"
    metrics = killed_then_relaunched(run_dir, STOPPING, kill)
    want = {**expected["early_stopping"], "checkpoint": str(run_dir / "checkpoints" / "best.ckpt")}
    assert (metrics["early_stopping"], metrics["steps"]) == (want, 8)
    assert metrics["validation"] == expected["validation"]
    for name in ("best.ckpt", "last.ckpt", "step000004.ckpt", "step000008.ckpt"):
        assert_same_checkpoint(reference / "checkpoints" / name, run_dir / "checkpoints" / name)
    stored = load(run_dir / "checkpoints" / "last.ckpt")["callbacks"]
    assert next(v for k, v in stored.items() if k.startswith("EarlyStopping")) == {
        "best": expected["early_stopping"]["best"], "best_step": 4, "wait": 1, "stopped_step": 8,
    }  # fmt: skip


def same(a, b) -> bool:
    """Equal, tensors (a distillation teacher's weights) bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return a == b


# ---- a curriculum stage that ends on a plateau --------------------------------------------------------
# Stage a validates every 2 steps, counts its plateau at step 4 and ends after step 5; stage b trains 6 and 7.
# Checkpoints every step, each written after its step's validation.
PLATEAU = [*PLATEAU_STAGES, "trainer.max_steps=7"]


@pytest.fixture(scope="module")
def plateau(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("plateau")
    done = launch(run_dir, PLATEAU, base=TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [(s["name"], s["start_step"], s["step"]) for s in metrics["stages"]] == [("a", 0, 5), ("b", 5, 7)]
    return run_dir, metrics


# last.ckpt:4 -- after the checkpoint of step 4, whose validation counted the plateau (the stage goes on);
# last.ckpt:5 -- after the checkpoint of step 5, where the stage ended and b is not started yet.
@pytest.mark.parametrize("kill", ["last.ckpt:4", "last.ckpt:5"])
def test_a_plateau_stage_killed_after_a_checkpoint_relaunches_as_uninterrupted(tmp_path, plateau, kill):
    reference, expected = plateau
    run_dir = tmp_path / "run"
    metrics = killed_then_relaunched(run_dir, PLATEAU, kill, base=TINY)
    assert (metrics["stages"], metrics["budget"]) == (expected["stages"], expected["budget"])
    for step in range(1, 8):
        name = f"step{step:06d}.ckpt"
        assert_same_checkpoint(reference / "checkpoints" / name, run_dir / "checkpoints" / name)
        want, got = (load(d / "checkpoints" / name)["callbacks"]["CurriculumCallback"] for d in (reference, run_dir))
        assert same(got, want), name
    assert_same_checkpoint(reference / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / "last.ckpt")


# ---- results: metrics.json is written last ----------------------------------------------------------


def comparable(metrics: dict, run_dir: Path) -> dict:
    """metrics.json without what differs between launches (time, the run folder's own path, and a relaunch's
    ``earlier_environments``, each of which must be this one: the launches ran on the same machine and code)."""
    for launch in metrics.get("earlier_environments", []):
        assert launch["environment"] == metrics["environment"], launch
    skipped = ("wall_seconds", "step_cost", "earlier_environments")
    text = json.dumps({k: v for k, v in metrics.items() if k not in skipped})
    return json.loads(text.replace(str(run_dir), "<run>"))
