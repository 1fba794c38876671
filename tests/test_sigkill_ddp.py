"""SIGKILL under DDP (2 gloo ranks): rank 0 killed right after a checkpoint; no rank hangs, the relaunch is exact.

The kill shim and the helpers are ``tests/test_sigkill.py``'s (a file of its own so the slow SIGKILL runs
spread over the test workers).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_sigkill import BASE, SHIM, assert_same_checkpoint, comparable

pytestmark = pytest.mark.slow

# ---- DDP: rank 0 killed at a checkpoint -------------------------------------------------------------
# 2 gloo ranks, half batches; step 3 validates and writes step000003.ckpt and last.ckpt after its validation.
DDP = [
    "trainer=ddp", "trainer.devices=2", "data.batch_size=4", "trainer.max_steps=6", "trainer.val_check_interval=3",
    "checkpoint.every_n_train_steps=3", "eval.final=false",
]  # fmt: skip


def launch_group(run_dir: Path, overrides: list[str], kill: str | None = None) -> tuple[int, str]:
    """``launch`` in a process group of its own; waits for every process of it (the ranks Lightning starts
    hold the same stderr) and kills the group if one is still alive after the timeout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SHIM), os.environ.get("PYTHONPATH")]))}
    env.pop("BINDSPACE_KILL_AT", None)
    if kill is not None:
        env |= {"BINDSPACE_KILL_AT": kill, "BINDSPACE_KILL_RANK": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bindspace.train", *BASE, *overrides, f"hydra.run.dir={run_dir}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        _, err = proc.communicate(timeout=300)  # returns once no process holds stderr: every rank has exited
    finally:
        left = alive_in_group(proc.pid)
        if left:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not left, f"ranks {left} outlived the launch\n{err[-2000:]}"
    return proc.returncode, err


def alive_in_group(pgid: int) -> list[int]:
    """The processes of a process group that still run (an orphaned rank that exited stays a zombie here)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def test_ddp_rank_0_killed_after_a_checkpoint_resumes_bit_for_bit(tmp_path):
    reference = tmp_path / "uninterrupted"
    code, err = launch_group(reference, DDP)
    assert code == 0, err[-3000:]
    run_dir = tmp_path / "run"
    # Rank 1 waits in the collective after the save: the dead peer closes its gloo connection, and rank 1 fails
    # at once ("Connection closed by peer") instead of waiting for the process group's 30-minute timeout.
    code, err = launch_group(run_dir, DDP, kill="last.ckpt:1")
    assert code == -9, err[-3000:]
    assert "Connection closed by peer" in err, err[-3000:]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt", "step000003.ckpt"]
    code, err = launch_group(run_dir, DDP)
    assert code == 0, err[-3000:]
    assert not list(run_dir.rglob("*.tmp"))
    for name in ("last.ckpt", "step000003.ckpt", "step000006.ckpt"):
        assert_same_checkpoint(reference / "checkpoints" / name, run_dir / "checkpoints" / name)
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, reference))
    assert [launch["until_step"] for launch in got["earlier_environments"]] == [3]  # the killed launch, recorded
    assert comparable(got, run_dir) == comparable(want, reference)
