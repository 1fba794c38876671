"""Issue 13 through the real ``bindspace-train``: bad checkpoints, mistyped values, one run per folder.

Nothing is left behind either. Each family of cases launches the installed entry point in a fresh
interpreter, as a user would (the other cases of a family that stop before any compute run the same
``main()`` in-process: see ``train``), and checks the contract of docs/reliability.md: one stderr line
naming the file, key or value, exit 2, no traceback, before any compute (where the input can be checked
up front), and nothing written into a new run folder.
"""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_OVERRIDES, bindspace_train

from bindspace.utils.io import DiskFullError, atomic_write, atomic_write_text

pytestmark = pytest.mark.slow

PREFIX = "bindspace-train: config error: "
QUICK = [
    *(o for o in TINY_OVERRIDES if not o.startswith(("trainer.max_steps", "checkpoint."))),
    "trainer.max_steps=2",
    "checkpoint.every_n_train_steps=1",
    "eval.final=false",
    "+trainer.limit_val_batches=0",
]
# A data source that would fail on its own if it were ever read (its paths exist, as the checks before launch
# require, but hold no manifest): checks that come first prove they ran before any data was read. The graph
# is given, so the manifest is not even read for its columns.
BROKEN_DATA = [
    "data=manifest", "data.train=/dev/null", "data.val=/dev/null",
    "graph.modalities=[image,text,audio,depth,thermal,imu]",
]  # fmt: skip


def train(
    run_dir: Path, *overrides: str, timeout: float = 600, fresh_interpreter: bool = True
) -> subprocess.CompletedProcess:
    """``bindspace-train`` into ``run_dir`` (``conftest.bindspace_train``). Each family of cases below runs at
    least one case in a fresh interpreter; the others of the family, which stop before any compute, run its
    ``main()`` in this process (``fresh_interpreter=False``)."""
    base = [o for o in QUICK if not o.startswith("data.")] if "data=manifest" in overrides else QUICK
    argv = [*base, *overrides, f"hydra.run.dir={run_dir}"]
    return bindspace_train(*argv, fresh_interpreter=fresh_interpreter, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess, prefix: str = PREFIX) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[-1].startswith(prefix) and sum(line.startswith(prefix) for line in lines) == 1, proc.stderr
    return lines[-1].removeprefix(prefix)


def assert_nothing_written(run_dir: Path) -> None:
    assert not run_dir.exists() or not any(run_dir.iterdir()), sorted(p.name for p in run_dir.iterdir())


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A real 2-step run of the tiny model through the CLI: its folder and its console."""
    run_dir = tmp_path_factory.mktemp("trained")
    proc = train(run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


@pytest.fixture(scope="module")
def trained(trained_run) -> Path:
    """The run's last.ckpt: the checkpoint the cases below corrupt."""
    return trained_run[0] / "checkpoints" / "last.ckpt"


def test_lightnings_lines_are_printed_once_and_kept_in_the_runs_log(trained_run):
    """Lightning's package logger has a console handler of its own, and its records also reached the root
    logger's (Hydra's): "GPU available" and "`Trainer.fit` stopped" were each printed twice."""
    run_dir, proc = trained_run
    console, log = proc.stdout + proc.stderr, (run_dir / "train.log").read_text()
    for line in ("GPU available: False", "`Trainer.fit` stopped: `max_steps="):
        assert console.count(line) == 1 and line in log, (line, console)


# ---- case 4: checkpoints given to ckpt_path are opened and checked before data is decoded --------------


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def bad_checkpoint(kind: str, good: Path, folder: Path) -> Path:
    path = folder / f"{kind}.ckpt"
    if kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "payload":
        torch.save({"state_dict": {}, "x": Payload(folder / "MARKER")}, path)
    elif kind == "other_size":  # the same checkpoint for a model whose image trunk is twice as wide
        ckpt = torch.load(good, weights_only=True)
        key = next(k for k in ckpt["state_dict"] if k.startswith("model.heads.image") and k.endswith("weight"))
        ckpt["state_dict"][key] = torch.zeros(*ckpt["state_dict"][key].shape[:-1], 999)
        torch.save(ckpt, path)
    elif kind == "other_modalities":
        ckpt = torch.load(good, weights_only=True)
        ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if ".imu" not in k}
        torch.save(ckpt, path)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("truncated", "not a readable torch checkpoint"),
        ("payload", "carries Python code or objects, refused"),
        ("other_size", "a checkpoint of another model size: model.heads.image"),
        ("other_modalities", "a checkpoint of another model"),
    ],
)
def test_a_bad_checkpoint_to_resume_is_one_line_before_any_data(tmp_path, trained, kind, message):
    path = bad_checkpoint(kind, trained, tmp_path)
    run_dir = tmp_path / "run"
    error = one_line_error(train(run_dir, f"ckpt_path={path}", *BROKEN_DATA, fresh_interpreter=kind == "payload"))
    assert error.startswith(str(path)) and message in error, error
    assert not (tmp_path / "MARKER").exists()
    assert_nothing_written(run_dir)


# ---- case 5: numeric keys are typed and ranged; unknown keys are refused ------------------------------


MISTYPED = [
    # The cases, each through the real CLI.
    ("trainer.max_steps=abc", "trainer.max_steps must be an integer >= 1, got 'abc'", True),
    ("trainer.max_steps=0", "trainer.max_steps must be an integer >= 1, got 0", True),
    ("optim.lr=-1", "optim.lr must be in (0, inf), got -1", True),
    ("optim.warmup_steps=-5", "optim.warmup_steps must be an integer >= 0, got -5", True),
    ("+foo=1", "unknown top-level key(s) ['foo']", True),
    # More of the same rules, checked in-process (the CLI path is the one above).
    ("optim.betas=[0.9,1.5]", "optim.betas[1] must be in [0, 1), got 1.5", False),
    ("optim.lr=fast", "optim.lr must be a number, got 'fast'", False),
    ("+trainer.max_step=5", "trainer: unknown key(s) ['max_step']", False),
    ("+checkpoint.every_n_steps=5", "checkpoint: unknown key(s) ['every_n_steps']", False),
    ("seed=-1", "seed must be an integer in [0, 2**32), got -1", False),
    ("modalities.image.trunk.depth=two", "modalities.image.trunk.depth must be an integer, got 'two'", False),
    ("trainer.val_check_interval=1.5", "trainer.val_check_interval must be a step count >= 1", False),
    ("+graph.anchor=text", "graph: unknown key(s) ['anchor'] (did you mean 'graph.anchors'?)", False),
    ("+anchr=text", "unknown top-level key(s) ['anchr'] (did you mean 'anchor'?)", False),
    ("+optim.warmup=10", "optim: unknown key(s) ['warmup'] (did you mean 'warmup_steps'?)", False),
]


@pytest.mark.parametrize(("override", "message", "cli"), MISTYPED, ids=[m[0] for m in MISTYPED])
def test_a_mistyped_or_out_of_range_value_is_one_line(tmp_path, override, message, cli):
    if cli:
        run_dir = tmp_path / "run"
        error = one_line_error(train(run_dir, override, *BROKEN_DATA))
        assert not run_dir.exists()  # not even the empty folder Hydra made
    else:
        from conftest import compose_config
        from omegaconf import OmegaConf

        from bindspace.config import build_run_spec, check_train_config
        from bindspace.modalities import ConfigError

        plain = OmegaConf.to_container(compose_config([override], run_dir=str(tmp_path)), resolve=True)
        with pytest.raises(ConfigError) as caught:
            check_train_config(plain)
            build_run_spec(plain)
        error = str(caught.value)
    assert message in error, error


# ---- case 6: one run per run folder ----------------------------------------------------------------------


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def test_a_second_launch_into_a_live_folder_stops_and_a_dead_holder_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "bindspace.train", *QUICK, "trainer.max_steps=100000",
         "checkpoint.every_n_train_steps=100000", f"hydra.run.dir={run_dir}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(run_dir / "train.log", first)  # written once the folder is locked
        holder = json.loads((run_dir / ".lock").read_text())
        assert holder["pid"] == first.pid
        error = one_line_error(train(run_dir, "seed=1"))
        assert f"run folder {run_dir} is in use by pid {first.pid} on host" in error, error
        config = (run_dir / ".hydra" / "config.yaml").read_text()
        assert "seed: 0" in config  # the live run's record is untouched by the refused launch
    finally:
        first.send_signal(signal.SIGKILL)  # dies without releasing anything: the lock file stays behind
        first.communicate()
    assert (run_dir / ".lock").exists()
    proc = train(run_dir, "seed=1", "resume=never")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"taking over the lock of pid {first.pid} on host" in proc.stdout + proc.stderr  # the log's console
    assert not (run_dir / ".lock").exists()  # released at the end of the run
    assert "seed: 1" in (run_dir / ".hydra" / "config.yaml").read_text()


def test_a_live_folder_with_a_checkpoint_is_refused_without_announcing_a_resume(tmp_path):
    # The folder's last.ckpt must not be announced as resumed by a launch that the lock then refuses.
    import fcntl
    import os

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"the live run's checkpoint")
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # this test process is the live holder
        os.write(fd, json.dumps({"host": "here", "pid": os.getpid(), "started": "now"}).encode())
        proc = train(run_dir)
        error = one_line_error(proc)
        assert f"is in use by pid {os.getpid()}" in error, error
        assert "resuming" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    finally:
        os.close(fd)


# ---- case 8: nothing left behind ---------------------------------------------------------------------------


def test_stale_temporaries_of_a_killed_run_are_removed_at_the_next_start(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    stale = [run_dir / "checkpoints" / ".step000001.ckpt.x1y2z3.tmp", run_dir / ".metrics.json.abc123.tmp"]
    # cache.frozen_features' tables (default cache.dir: <run>/feature_cache/<encoder hash>/) were left for good.
    stale.append(run_dir / "feature_cache" / "8044224a4f187e98" / ".image-audio.rank0.pt.3ys37s2h.tmp")
    stale.append(run_dir / ".hydra" / ".config.yaml.k2j4h6g8.tmp")  # the recorded config is written atomically too
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * 1000)
    proc = train(run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not any(p.exists() for p in stale)
    assert "a temporary file an interrupted run left behind" in proc.stdout + proc.stderr
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    # The finished run is what <parent>/latest points at (runs/train/latest for the notebook).
    latest = tmp_path / "latest"
    assert latest.is_symlink() and latest.resolve() == run_dir.resolve()


def test_a_write_that_fails_for_want_of_space_says_so_and_leaves_the_old_file(tmp_path):
    target = atomic_write_text(tmp_path / "metrics.json", "old")

    def full(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=f"no space left on the device writing {target}"):
        atomic_write(target, full)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (needs mount privileges: root in a container; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.decode().strip()})")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_leaves_no_temporaries(small_disk):
    run_dir = small_disk / "run"
    proc = train(run_dir, "logger=none")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("bindspace-train: disk full: no space left on the device writing "), lines[-1]
    assert "checkpoints" in lines[-1]
    leftovers = [p for p in run_dir.rglob("*.tmp")]
    assert not leftovers, leftovers


def test_config_error_in_a_used_folder_changes_nothing_in_it(trained):
    """A config error never touches a run folder that already holds a run: its record stays the old run's."""
    run_dir = trained.parent.parent
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert (run_dir / ".hydra" / "config.yaml") in before
    one_line_error(train(run_dir, "optim.lr=-1", fresh_interpreter=False))
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before


def test_a_relaunch_that_fails_after_launch_leaves_the_record_of_the_run_in_the_folder(trained):
    """A relaunch into a used folder that fails once launched (here its model does not fit the folder's
    last.ckpt) rewrote .hydra/ with its own config while the checkpoints and metrics stayed the old run's;
    bindspace-report and the checkpoint loader read that record."""
    run_dir = trained.parent.parent
    before = {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()}
    assert {"config.yaml", "overrides.yaml"} <= set(before)
    message = one_line_error(train(run_dir, "modalities.imu.trunk.depth=3", fresh_interpreter=False))
    assert "a checkpoint of another model" in message
    assert {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()} == before


# ---- a relaunch that changes the optimizer: refused, or the checkpoint's values would be used silently -------


def snapshot(run_dir: Path) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=0.01", "optim.lr is 0.001 in the checkpoint, 0.01 in this config"),
        ("optim.weight_decay=0.2", "optim.weight_decay is 0.05 in the checkpoint, 0.2 in this config"),
        ("optim.layer_decay=0.8", "optim.layer_decay is 1.0 in the checkpoint, 0.8 in this config"),
        ("modalities.audio.lr_scale=0.5", "modalities.audio.lr_scale is 1.0 in the checkpoint, 0.5 in this config"),
    ],
    ids=lambda value: value if "=" in value else "",
)
def test_a_relaunch_that_changes_the_optimizer_is_refused_and_changes_nothing(trained, override, message):
    """Lightning restores the checkpoint's optimizer (each group's lr, weight decay, betas, eps; the scheduler's
    base lrs), so a relaunch with another optim.lr trained on at the old one while its log showed the new one
    (and another layer_decay or lr_scale failed with a traceback, its parameter groups no longer matching). Now
    one line naming the key and both values and how to go on, exit 2, before any data is read (the data paths
    hold no manifest), and the checkpoints, results and record as they were (bytes and mtimes; the log only grows)."""
    run_dir = trained.parent.parent
    log = run_dir / "train.log"
    before = snapshot(run_dir)
    fresh = override.startswith("optim.lr=")  # the first case through the CLI
    error = one_line_error(train(run_dir, override, *BROKEN_DATA, fresh_interpreter=fresh))
    assert error.startswith(f"{trained}: {message}: resuming restores the checkpoint's optimizer"), error
    key, old = message.split(" is ")[0], message.split(" is ")[1].split(" in the checkpoint")[0]
    assert f"relaunch with {key}={old} to continue this run" in error and f"init_from={trained}" in error, error
    after = snapshot(run_dir)
    assert {p: v for p, v in after.items() if p != log} == {p: v for p, v in before.items() if p != log}
    assert after[log][0].startswith(before[log][0])


def test_a_relaunch_may_train_longer_with_another_schedule_and_logger(trained, tmp_path):
    """What a resume takes from this launch, not the checkpoint: trainer.max_steps, the schedule's warmup and
    floor, the logger. Such a relaunch resumes (the control of the refusals above)."""
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(trained.parent.parent, run_dir)
    changes = ["trainer.max_steps=3", "optim.warmup_steps=5", "optim.min_lr_ratio=0.1", "logger=csv"]
    proc = train(run_dir, *changes)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Once on the console and in the run's log: announced before the trainer was built, it was printed twice
    # (by Lightning's own console handler too, "INFO: bindspace-train: resuming from ...").
    resumed = f"bindspace-train: resuming from {run_dir / 'checkpoints' / 'last.ckpt'}"
    assert (proc.stdout + proc.stderr).count(resumed) == 1, proc.stdout + proc.stderr
    assert resumed in (run_dir / "train.log").read_text()
    assert "exists and is not empty" not in proc.stderr  # Lightning's note on the run's own checkpoint folder
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
