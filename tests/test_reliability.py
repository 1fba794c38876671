"""Reliability: non-finite guards, preemption with automatic resume, atomic checkpoints, determinism.

Each test drives the real training entry point (``bindspace.training.pipeline.run`` in-process, or the CLI in a
subprocess where a signal has to hit a real process).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_OVERRIDES, compose_config, python_m

from bindspace.training.module import AlignmentModule
from bindspace.training.reliability import AtomicCheckpointIO, NonFiniteError, NonFiniteGuard
from bindspace.utils.io import atomic_write_json

pytestmark = pytest.mark.slow

# Two edges keep these runs at a few seconds; dropout stays on (it is seeded per step, so resume and
# determinism must hold with it).
SMALL = ["graph.edges=[[image,audio],[audio,imu]]", "checkpoint.every_n_train_steps=2", "eval.final=false"]


def load_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def plant_nonfinite(monkeypatch, steps: set[int]) -> None:
    """A NaN in the image input of the batches of the given global steps (a corrupt file would do this)."""
    original = AlignmentModule.on_train_batch_start

    def poisoned(self, batch, batch_idx):
        original(self, batch, batch_idx)
        if self.global_step in steps:
            batch["image|audio"]["image"][0].fill_(float("nan"))

    monkeypatch.setattr(AlignmentModule, "on_train_batch_start", poisoned)


def test_nonfinite_steps_are_skipped_counted_and_leave_weights_untouched(tmp_path, monkeypatch, caplog):
    plant_nonfinite(monkeypatch, {2, 3})
    from bindspace.train import run

    run(compose_config([*SMALL, "trainer.max_steps=6", "nonfinite.max_consecutive=2"], str(tmp_path)))
    ckpts = tmp_path / "checkpoints"
    before, after = (
        torch.load(ckpts / "step000002.ckpt", weights_only=True),
        torch.load(ckpts / "step000004.ckpt", weights_only=True),
    )
    # Steps 2 and 3 were skipped: weights and Adam moments are exactly those after step 1.
    for name, value in before["state_dict"].items():
        assert torch.equal(value, after["state_dict"][name]), name
    for a, b in zip(before["optimizer_states"][0]["state"].values(), after["optimizer_states"][0]["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])
    guard = next(v for k, v in after["callbacks"].items() if k.startswith("NonFiniteGuard"))
    assert guard == {"consecutive": 2, "skipped": 2}
    # Step 4 trained again, and every checkpoint written holds finite weights.
    final = load_state(ckpts / "step000006.ckpt")
    assert any(not torch.equal(final[k], v) for k, v in after["state_dict"].items())
    for path in ckpts.glob("*.ckpt"):
        assert all(torch.isfinite(t).all() for t in load_state(path).values() if t.is_floating_point()), path
    warnings = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warnings) == 2 and "step 3" in warnings[1] and "2 in a row" in warnings[1]


def test_too_many_nonfinite_steps_in_a_row_stop_with_a_clear_error(tmp_path, monkeypatch):
    plant_nonfinite(monkeypatch, {2, 3, 4, 5})
    from bindspace.train import run

    with pytest.raises(NonFiniteError, match=r"3 consecutive steps up to step 4 .*max_consecutive=2"):
        run(compose_config([*SMALL, "trainer.max_steps=8", "nonfinite.max_consecutive=2"], str(tmp_path)))
    # Written before the stop: step 4's checkpoint is step 2's weights (steps 2 and 3 were skipped).
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step*.ckpt")) == ["step000002.ckpt", "step000004.ckpt"]
    two, four = load_state(ckpts / "step000002.ckpt"), load_state(ckpts / "step000004.ckpt")
    assert all(torch.equal(v, four[k]) for k, v in two.items())


def test_a_checkpoint_with_nonfinite_weights_is_never_written(tmp_path, monkeypatch):
    """Weights corrupted behind the guard's back (here: directly) make the checkpoint write fail loudly."""
    original = AlignmentModule.on_train_batch_end

    def corrupt(self, outputs, batch, batch_idx):
        original(self, outputs, batch, batch_idx)
        if self.global_step == 3:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("inf"))

    monkeypatch.setattr(AlignmentModule, "on_train_batch_end", corrupt)
    from bindspace.train import run

    # No validation: the checkpoint of a step that validates is written after the validation, which would meet
    # the infinite weights first.
    with pytest.raises(NonFiniteError, match="refusing to write a checkpoint with non-finite weights"):
        run(compose_config([*SMALL, "trainer.max_steps=6", "+trainer.limit_val_batches=0"], str(tmp_path)))
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == ["last.ckpt", "step000002.ckpt"]
    assert load_state(ckpts / "last.ckpt").keys() == load_state(ckpts / "step000002.ckpt").keys()
    assert not list(ckpts.glob(".*.tmp"))


def test_guard_rejects_a_negative_limit():
    with pytest.raises(ValueError, match="max_consecutive"):
        NonFiniteGuard(-1)


# ---- preemption ---------------------------------------------------------------------------------
CLI = [
    *(o for o in TINY_OVERRIDES if not o.startswith(("trainer.max_steps", "checkpoint."))),
    *SMALL,
    "trainer.max_steps=41",  # not a multiple of the checkpoint interval (2): the final state must still be saved
    "+trainer.limit_val_batches=0",
]


def launch(run_dir: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [*python_m("bindspace.train"), *CLI, *extra, f"hydra.run.dir={run_dir}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    code, err = finish(launch(run_dir))
    assert code == 0, err[-3000:]
    return load_state(run_dir / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGUSR1"])
def test_signal_saves_a_checkpoint_and_the_next_launch_resumes_exactly(tmp_path, uninterrupted, signame):
    # A stand-in for SLURM: the job id is set and `scontrol` records how it was called.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/scontrol.args\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {"SLURM_JOB_ID": "4242", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    run_dir = tmp_path / "run"
    proc = launch(run_dir, env=env)
    first = run_dir / "checkpoints" / "step000002.ckpt"
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be signalled"
    proc.send_signal(getattr(signal, signame))
    code, err = finish(proc)
    signum = int(getattr(signal, signame))
    assert code == 128 + signum, err[-3000:]
    assert "Traceback" not in err
    stopped_at = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 2 <= stopped_at < 41
    assert f"preempted: stopped by {signame} after step {stopped_at}" in err
    assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "4242"]
    assert not (run_dir / "metrics.json").exists()  # a half-trained model is not evaluated

    # The requeued job: same command, same run folder, no ckpt_path -> resume: auto.
    code, err = finish(launch(run_dir))
    assert code == 0, err[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 41
    assert_last_is_the_final_state(run_dir, 41)
    resumed = load_state(run_dir / "checkpoints" / "last.ckpt")
    for name, value in uninterrupted.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("step", [5, 4])
def test_a_preempted_step_is_validated_as_uninterrupted_and_the_relaunch_matches(tmp_path, monkeypatch, step):
    # Validation every 4 steps with early stopping that stops at the second one (step 8 uninterrupted). A
    # SIGTERM during step 5 must stop after it without validating: Lightning validates once more when a run
    # is asked to stop, and that extra validation (off the interval) counted towards patience, so the run
    # stopped early at step 5 and its relaunch never trained steps 6 to 8. During step 4 the step's own
    # validation must run and be in last.ckpt (a resume does not validate its step again).
    from bindspace.train import run
    from bindspace.training.reliability import Preempted

    overrides = [
        "trainer.max_steps=40", "trainer.val_check_interval=4", "checkpoint.every_n_train_steps=2", "eval.final=false",
        "early_stopping={metric: val/mean_R@1, patience: 1, min_delta: 100}",
    ]  # fmt: skip
    uninterrupted = run(compose_config(overrides, run_dir=str(tmp_path / "uninterrupted")))
    assert (uninterrupted["early_stopping"]["stopped_step"], uninterrupted["steps"]) == (8, 8)

    original = AlignmentModule.on_train_batch_start

    def signalled(self, batch, batch_idx):
        original(self, batch, batch_idx)
        if self.global_step == step - 1:  # during `step`
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(AlignmentModule, "on_train_batch_start", signalled)
    run_dir = tmp_path / "preempted"
    with pytest.raises(Preempted, match=f"after step {step}"):
        run(compose_config(overrides, run_dir=str(run_dir)))
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    validated = [v["step"] for c, v in last["callbacks"].items() if "Curriculum" in c for v in v["validation"]]
    assert last["global_step"] == step and validated == [4]
    monkeypatch.setattr(AlignmentModule, "on_train_batch_start", original)
    resumed = run(compose_config(overrides, run_dir=str(run_dir)))
    expected = {**uninterrupted["early_stopping"], "checkpoint": str(run_dir / "checkpoints" / "best.ckpt")}
    assert resumed["steps"] == 8 and resumed["early_stopping"] == expected
    a = load_state(tmp_path / "uninterrupted" / "checkpoints" / "last.ckpt")
    b = load_state(run_dir / "checkpoints" / "last.ckpt")
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_a_signal_during_an_accumulated_step_stops_after_the_step_and_the_relaunch_matches(tmp_path, monkeypatch):
    """With ``trainer.accumulate_grad_batches=2`` a SIGTERM during the first batch of step 3 stops after the step
    (its second batch). It stopped after that first batch and saved it as done, with the step not taken: the
    relaunch's step loader restarted at the step's first batch while Lightning counted it as the second, so
    step 3 trained on one batch and every later batch on its predecessor's data. Under distillation (stages of
    2 steps), so the step saved is one with a teacher."""
    from bindspace.train import run
    from bindspace.training.reliability import Preempted

    overrides = ["graph.modalities=[image,text,audio]", "curriculum=progressive_distill", "curriculum.order=[audio]",
                 "curriculum.stage.steps=2", "curriculum.stage.warmup_steps=1", "+trainer.accumulate_grad_batches=2",
                 "trainer.max_steps=4", "checkpoint.every_n_train_steps=4", "data.batch_size=4", "eval.final=false",
                 "+trainer.limit_val_batches=0"]  # fmt: skip
    run(compose_config(overrides, run_dir=str(tmp_path / "uninterrupted")))
    original = AlignmentModule.on_train_batch_start

    def signalled(self, batch, batch_idx):
        original(self, batch, batch_idx)
        if self.global_step == 2 and batch_idx % 2 == 0:  # the first batch of step 3
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(AlignmentModule, "on_train_batch_start", signalled)
    run_dir = tmp_path / "preempted"
    with pytest.raises(Preempted, match="after step 3"):
        run(compose_config(overrides, run_dir=str(run_dir)))
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 3 and last["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["ready"] == 6
    monkeypatch.setattr(AlignmentModule, "on_train_batch_start", original)
    assert run(compose_config(overrides, run_dir=str(run_dir)))["steps"] == 4
    a, b = (load_state(d / "checkpoints" / "last.ckpt") for d in (tmp_path / "uninterrupted", run_dir))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_data_error_inside_an_accumulated_step_keeps_the_last_whole_step(tmp_path, monkeypatch):
    """A data error (a file that fails to decode) saves last.ckpt before the run stops, but not inside a step of
    ``trainer.accumulate_grad_batches=2`` whose first batch trained: that checkpoint counted the batch as done
    with its gradient lost, and the relaunch trained every later batch on its predecessor's data. Lightning
    fetches a batch ahead, so the bad item 8 (step 5's first batch) stops the run before step 4's second batch:
    last.ckpt stays step 2's (the interval's) and the relaunch trains exactly as the uninterrupted run."""
    from bindspace.data.readers import DataFileError
    from bindspace.data.steps import StepBatches
    from bindspace.train import run

    overrides = ["graph.modalities=[image,text]", "+trainer.accumulate_grad_batches=2", "trainer.max_steps=6",
                 "checkpoint.every_n_train_steps=2", "data.batch_size=4", "eval.final=false",
                 "+trainer.limit_val_batches=0"]  # fmt: skip
    run(compose_config(overrides, run_dir=str(tmp_path / "uninterrupted")))
    original = StepBatches.__getitem__

    def bad_item(self, step):
        if step == 7:
            raise DataFileError("a.png", "cannot decode a PNG/JPEG/WEBP image")
        return original(self, step)

    monkeypatch.setattr(StepBatches, "__getitem__", bad_item)
    run_dir = tmp_path / "failed"
    with pytest.raises(DataFileError):
        run(compose_config(overrides, run_dir=str(run_dir)))
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 2
    monkeypatch.setattr(StepBatches, "__getitem__", original)
    assert run(compose_config(overrides, run_dir=str(run_dir)))["steps"] == 6
    a, b = (load_state(d / "checkpoints" / "last.ckpt") for d in (tmp_path / "uninterrupted", run_dir))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_data_error_in_a_validation_keeps_the_checkpoint_before_it(tmp_path, monkeypatch):
    """A data error in the validation of step 8, whose checkpoint waits for that validation: last.ckpt stays
    step 4's (saved with step 8's pre-validation state, the relaunch would not validate step 8 again and
    early stopping would miss it); the relaunch repeats steps 5-8 and the validation, as uninterrupted."""
    from bindspace.data.readers import DataFileError
    from bindspace.train import run
    from bindspace.training.module import AlignmentModule

    overrides = ["graph.modalities=[image,text]", "trainer.max_steps=8", "checkpoint.every_n_train_steps=4",
                 "trainer.val_check_interval=4", "eval.final=false", "+early_stopping.patience=5"]  # fmt: skip
    run(compose_config(overrides, run_dir=str(tmp_path / "uninterrupted")))
    original = AlignmentModule.validation_step

    def bad_item(self, batch, batch_idx):
        if self.trainer.global_step == 8:
            raise DataFileError("a.png", "cannot decode a PNG/JPEG/WEBP image")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(AlignmentModule, "validation_step", bad_item)
    run_dir = tmp_path / "failed"
    with pytest.raises(DataFileError):
        run(compose_config(overrides, run_dir=str(run_dir)))
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 4
    monkeypatch.setattr(AlignmentModule, "validation_step", original)
    assert run(compose_config(overrides, run_dir=str(run_dir)))["steps"] == 8
    a, b = (torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
            for d in (tmp_path / "uninterrupted", run_dir))  # fmt: skip
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    early = [k for k in a["callbacks"] if "EarlyStopping" in k]
    assert early and all(a["callbacks"][k] == b["callbacks"][k] for k in early)


def test_sigterm_under_ddp_stops_every_rank_after_the_same_step_and_resumes(tmp_path):
    """2 gloo ranks: the signal reaches rank 0, which forwards it; both stop together and one checkpoint is saved."""
    run_dir = tmp_path / "run"
    ddp = ["trainer=ddp", "trainer.devices=2", "data.batch_size=4"]
    proc = launch(run_dir, *ddp)
    first = run_dir / "checkpoints" / "step000002.ckpt"
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be signalled"
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err
    stopped_at = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 2 <= stopped_at < 41
    code, err = finish(launch(run_dir, *ddp))
    assert code == 0, err[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 41 and metrics["world_size"] == 2
    assert_last_is_the_final_state(run_dir, 41)


def assert_last_is_the_final_state(run_dir: Path, steps: int) -> None:
    """After a preemption and a relaunch: one last.ckpt (no last-vN copies), holding the final step."""
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("last*")) == ["last.ckpt"]
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == steps
    final, last = load_state(ckpts / f"step{steps:06d}.ckpt"), load_state(ckpts / "last.ckpt")  # 41: off-interval
    assert final.keys() == last.keys()
    assert all(torch.equal(value, last[name]) for name, value in final.items())


def test_resume_never_starts_from_scratch(tmp_path):
    from bindspace.train import resume_checkpoint

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resume_checkpoint(compose_config(["resume=auto"], str(tmp_path)), tmp_path).endswith("last.ckpt")
    assert resume_checkpoint(compose_config(["resume=never"], str(tmp_path)), tmp_path) is None


# ---- atomic writes --------------------------------------------------------------------------------
class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("killed mid-write")


def test_checkpoint_write_that_dies_leaves_the_previous_file(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    big = {"state_dict": {"w": torch.zeros(1_000_000)}, "global_step": 2, "z": Unpicklable()}
    with pytest.raises(RuntimeError, match="killed mid-write"):
        io.save_checkpoint(big, path)  # torch.save has written the tensor bytes when it fails
    assert io.load_checkpoint(path, weights_only=True)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_metrics_write_that_dies_leaves_the_previous_file(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"steps": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"steps": 2, "bad": object()})
    assert json.loads(path.read_text()) == {"steps": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


# ---- determinism ----------------------------------------------------------------------------------
def test_same_seed_gives_the_same_metrics_json(tmp_path):
    from bindspace.train import run

    outputs = []
    for name in ("a", "b"):
        run(compose_config(["graph.edges=[[image,audio],[audio,imu]]", "seed=7"], str(tmp_path / name)))
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        metrics.pop("wall_seconds")  # what the machine measured, not what the seed decides
        cost = metrics.pop("step_cost")
        assert cost["steps_timed"] == 5 and cost["step_ms_median"] > 0 and cost["peak_rss_mib"] > 0
        outputs.append(metrics)
    assert outputs[0] == outputs[1]
    assert outputs[0]["steps"] == 8 and outputs[0]["retrieval"]


def test_a_finished_run_leaves_no_signal_handler_holding_it(tmp_path):
    """Jobs of a sweep run one after another in one process: a finished job must leave the signal handlers as
    it found them, or the handler it leaves (Lightning's, which holds the trainer) keeps its model, optimizer
    and data alive, and the next job's chains it in (peak RSS grew job after job of a sweep)."""
    import functools
    import gc
    import weakref

    import lightning as L

    from bindspace.train import run

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    trainers = []
    real_init = L.Trainer.__init__

    @functools.wraps(real_init)  # the same signature: the config check reads the Trainer's arguments from it
    def recording_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        trainers.append(weakref.ref(self))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(L.Trainer, "__init__", recording_init)
        for name in ("a", "b"):
            run(compose_config(["eval.final=false", "trainer.max_steps=2"], str(tmp_path / name)))
    assert {s: signal.getsignal(s) for s in before} == before
    gc.collect()
    assert len(trainers) == 2 and [t() for t in trainers] == [None, None], "a finished job's trainer is still alive"


def test_step_cost_times_whole_steps_with_gradient_accumulation(tmp_path, monkeypatch):
    """``step_cost`` times optimisation steps: with ``trainer.accumulate_grad_batches=2`` a step is its two
    batches. Each batch was timed as a step: twice the steps, each half as long."""
    import time as clock

    from bindspace.train import run

    original = AlignmentModule.training_step

    def slow(self, batch, batch_idx):
        clock.sleep(0.05)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(AlignmentModule, "training_step", slow)
    overrides = ["graph.modalities=[image,text]", "+trainer.accumulate_grad_batches=2", "trainer.max_steps=6",
                 "eval.final=false", "+trainer.limit_val_batches=0"]  # fmt: skip
    cost = run(compose_config(overrides, str(tmp_path)))["step_cost"]
    assert cost["steps_timed"] == 6 - 3 and cost["step_ms_median"] >= 100


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="the per-job peak needs Linux's clear_refs")
def test_step_cost_peak_is_this_jobs_not_an_earlier_jobs_of_the_same_process():
    from bindspace.training.callbacks import StepCost, peak_rss_kib

    earlier = torch.ones(256 * 2**20 // 4)  # an earlier job's 256 MiB (a sweep runs its jobs in one process)
    del earlier
    process_peak = peak_rss_kib()
    cost = StepCost()
    cost.on_train_start(None, None)
    summary = cost.summary()
    assert summary["peak_rss_scope"] == "job"
    assert 0 < summary["peak_rss_mib"] * 2**10 < process_peak - 200 * 2**10


def test_step_cost_p90_is_never_below_the_median():
    # A short run times few steps: with two, the p90 was the faster one (a floor index), below the median.
    from bindspace.training.callbacks import StepCost

    for times, p90 in [([0.1, 0.5], 460.0), ([0.3, 0.1, 0.2], 280.0), ([0.2] * 10 + [1.2], 200.0), ([0.25], 250.0)]:
        cost = StepCost(skip=0)
        cost.times = list(times)
        summary = cost.summary()
        assert summary["step_ms_p90"] == pytest.approx(p90), (times, summary)
        assert summary["step_ms_p90"] >= summary["step_ms_median"]


# ---- safe loading ---------------------------------------------------------------------------------
class Payload:
    """Unpickling this object would create ``marker``: the stand-in for code hidden in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoints_with_code_in_them_are_refused_without_running_it(tmp_path):
    from bindspace.inference import BindSpace, CheckpointError
    from bindspace.train import run

    marker, ckpt = tmp_path / "pwned", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "global_step": 1, "extra": Payload(marker)}, ckpt)
    with pytest.raises(CheckpointError, match=re.escape(str(ckpt))):
        BindSpace.from_checkpoint(ckpt)
    with pytest.raises(Exception, match=r"(?i)weights_only|unpickl"):  # resuming training: Lightning, weights_only
        run(compose_config([*SMALL, "trainer.max_steps=2", f"ckpt_path={ckpt}"], str(tmp_path / "run")))
    assert not marker.exists()


def test_transformers_remote_code_never_runs_unless_the_config_says_so(tmp_path):
    from bindspace.nn.pretrained import build_hf_trunk

    marker = tmp_path / "pwned"
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "evil", "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}})
    )
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w')\n")
    with pytest.raises(ValueError, match="trust_remote_code"):
        build_hf_trunk(str(folder), trust_remote_code=False)
    assert not marker.exists()


KILLED_WRITER = """
import sys, torch
from bindspace.training.reliability import AtomicCheckpointIO
AtomicCheckpointIO().save_checkpoint({"global_step": 2, "w": torch.ones(100_000_000)}, sys.argv[1])
"""


def test_a_process_killed_mid_checkpoint_leaves_the_previous_checkpoint(tmp_path):
    """SIGKILL while a 400 MB checkpoint is being written: ``last.ckpt`` is still the previous, whole file."""
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 1, "w": torch.zeros(3)}, path)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)])
    deadline = time.monotonic() + 120
    partial = []
    while proc.poll() is None and time.monotonic() < deadline:
        partial = [p for p in tmp_path.glob(".last.ckpt.*.tmp") if p.stat().st_size > 1_000_000]
        if partial:
            break
        time.sleep(0.005)
    assert partial, "the writer finished (or never started) before it could be killed"
    proc.kill()
    proc.wait()
    state = torch.load(path, weights_only=True)
    assert state["global_step"] == 1 and torch.equal(state["w"], torch.zeros(3))


def test_a_run_stopped_by_a_config_error_leaves_no_empty_folders(tmp_path, monkeypatch):
    """The run folder goes, and so do its parents below the working directory while empty (a fresh clone's
    ``runs/train``); a parent holding another run, and anything outside the working directory, stay."""
    from bindspace.utils.run_folder import remove_if_empty

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs/train/2026-12-01/18-00-00").mkdir(parents=True)
    remove_if_empty("runs/train/2026-12-01/18-00-00")
    assert list(tmp_path.iterdir()) == []

    (tmp_path / "runs/train/2026-12-01/17-00-00").mkdir(parents=True)
    (tmp_path / "runs/train/2026-12-01/17-00-00/metrics.json").write_text("{}")
    (tmp_path / "runs/train/2026-12-01/18-00-00").mkdir()
    remove_if_empty(tmp_path / "runs/train/2026-12-01/18-00-00")
    assert sorted(p.name for p in (tmp_path / "runs/train/2026-12-01").iterdir()) == ["17-00-00"]

    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    (outside / "a/run").mkdir(parents=True)
    remove_if_empty(outside / "a/run")  # hydra.run.dir outside the working directory: the run folder only
    assert (outside / "a").is_dir() and not (outside / "a/run").exists()
    (outside / "a").rmdir(), outside.rmdir()


def test_another_ranks_console_shows_errors_only_and_its_file_keeps_everything(tmp_path):
    from bindspace.utils.run_folder import RunFolder

    console = logging.StreamHandler(io.StringIO())
    root = logging.getLogger()
    root.addHandler(console)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        with RunFolder(tmp_path / "run", owner=False) as folder:
            folder.record({}, job_name="train_ddp_process_1")
            logging.getLogger("bindspace.test").warning("a warning rank 0 prints too")
            logging.getLogger("bindspace.test").error("an error of this rank")
        assert console.level == logging.NOTSET  # restored when the run ends
    finally:
        root.removeHandler(console)
        root.setLevel(level)
    shown = console.stream.getvalue()
    assert "an error of this rank" in shown and "a warning rank 0 prints too" not in shown
    kept = (tmp_path / "run" / "train_ddp_process_1.log").read_text()
    assert "a warning rank 0 prints too" in kept and "an error of this rank" in kept
