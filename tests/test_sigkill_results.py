"""SIGKILL while a run writes its results: ``metrics.json`` (what says a run finished) never comes without them.

The kill shim and the launch helpers are ``tests/test_sigkill.py``'s (a file of its own so the slow SIGKILL
runs spread over the test workers).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES, python_m
from test_sigkill import SHIM, comparable, launch

pytestmark = pytest.mark.slow

RESULTS = ["metrics.json", "retrieval.txt", "per_query.npz"]
FINISHED = ["trainer.max_steps=2", "checkpoint.every_n_train_steps=2", "+trainer.limit_val_batches=0"]


def assert_whole_results(run_dir: Path) -> None:
    """A metrics.json (what says a run finished; bindspace-report reads per_query.npz beside it) comes with the
    files that go with it."""
    if (run_dir / "metrics.json").exists():
        missing = [name for name in RESULTS if not (run_dir / name).exists()]
        assert not missing, f"metrics.json written, {missing} not"


def test_a_run_killed_while_writing_its_results_never_shows_a_metrics_json_without_them(tmp_path):
    # metrics.json was written first: killed before retrieval.txt, the folder looked finished without its
    # per-query values (a report of the sweep would fall back to another interval for it).
    reference = tmp_path / "uninterrupted"
    assert launch(reference, FINISHED).returncode == 0
    run_dir = tmp_path / "run"
    assert launch(run_dir, FINISHED, kill="retrieval.txt:1").returncode == -9
    assert_whole_results(run_dir)
    again = launch(run_dir, FINISHED)  # resumes at step 2 = max_steps: no training, the evaluation again
    assert again.returncode == 0, again.stderr[-3000:]
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, reference))
    assert comparable(got, run_dir) == comparable(want, reference)
    assert (run_dir / "retrieval.txt").read_text() == (reference / "retrieval.txt").read_text()

    # bindspace-eval of that checkpoint, killed the same way, and relaunched into its folder.
    evaluate = [*python_m("bindspace.eval"), f"ckpt_path={reference / 'checkpoints' / 'last.ckpt'}"]
    evaluate += [o for o in TINY_OVERRIDES if o.startswith("data.")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SHIM), os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "eval"
    killed = subprocess.run([*evaluate, f"hydra.run.dir={out}"], env={**env, "BINDSPACE_KILL_AT": "retrieval.txt:1"})
    assert killed.returncode == -9
    assert_whole_results(out)
    assert subprocess.run([*evaluate, f"hydra.run.dir={out}"], env=env, capture_output=True).returncode == 0
    assert_whole_results(out)
    assert not list(out.rglob("*.tmp"))
