"""Distributed negatives are correct: 2 DDP processes with batch B/2 train exactly like 1 process with batch B.

The contrastive loss is where data parallelism goes wrong silently (negatives not gathered, no gradient
through the gather, a loss or gradient off by the world size). These runs go through the real CLI with
Lightning's DDP on CPU (gloo), so the launcher, the step-indexed data sharding, the gather and DDP's
gradient averaging are all the production code paths.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import TINY_OVERRIDES, python_m

pytestmark = pytest.mark.slow

GLOBAL_BATCH = 8
STEPS = 4
# Dropout and drop-path draw per (seed, batch, rank), so they differ by construction between world
# sizes; everything else (data, initialisation, optimizer) must not.
COMMON = [
    *(o for o in TINY_OVERRIDES if not o.startswith(("data.batch_size", "trainer.max_steps", "logger="))),
    "logger=csv",
    f"trainer.max_steps={STEPS}",
    "trainer.log_every_n_steps=1",
    "+trainer.limit_val_batches=0",
    "eval.final=false",
    f"checkpoint.every_n_train_steps={STEPS}",
    "modalities.imu.trunk.drop_path=0.0",
    "modalities.imu.head.dropout=0.0",
]


class Launched:
    """A training run started through the CLI; :meth:`result` waits for it and reads it (once).

    Most of a short run here is a fresh interpreter importing torch and Lightning, on one core; a
    1-process reference launched next to a distributed run overlaps that start-up with the other run's.
    """

    def __init__(self, run_dir: Path, world_size: int, *overrides: str) -> None:
        parallel = ["trainer=ddp", f"trainer.devices={world_size}"] if world_size > 1 else []
        self.run_dir, self._read = run_dir, None
        self._stderr = run_dir.with_name(f"{run_dir.name}.stderr")  # a file: an unread full pipe would stall the run
        with open(self._stderr, "w") as stderr, open(run_dir.with_name(f"{run_dir.name}.stdout"), "w") as stdout:
            self._proc = subprocess.Popen(
                [*python_m("bindspace.train"), *COMMON, *parallel, *overrides,
                 f"data.batch_size={GLOBAL_BATCH // world_size}", f"hydra.run.dir={run_dir}"],
                stdout=stdout, stderr=stderr,
            )  # fmt: skip

    def result(self) -> tuple[list[float], dict[str, torch.Tensor]]:
        """The per-step losses of the CSV log and the final weights of last.ckpt."""
        if self._read is None:
            try:
                code = self._proc.wait(timeout=600)
            finally:
                self.close()
            assert code == 0, self._stderr.read_text()[-3000:]
            self._read = read_run(self.run_dir)
        return self._read

    def close(self) -> None:
        """Stop the run if it is still going (its test failed before waiting for it)."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> Launched:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def train(run_dir: Path, world_size: int, *overrides: str) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Train through the CLI; the per-step losses of the CSV log and the final weights of last.ckpt."""
    return Launched(run_dir, world_size, *overrides).result()


def read_run(run_dir: Path) -> tuple[list[float], dict[str, torch.Tensor]]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    losses = [float(r["train/loss"]) for r in sorted(rows, key=lambda r: int(r["step"]))]
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return losses, state


# Summation order differs between one process and two (gloo's all-reduce, the gathered matmuls), so a
# handful of weights near zero differ by a few 1e-6 after Adam's normalisation; the mean absolute
# difference stays ~4e-9. Without gradients through the gather it is ~5e-7 (max ~3e-5) for the full
# loss and ~2e-3 for the local loss: the same tolerance, applied below to both, separates them.
EXACT = {"atol": 1e-5, "mean_atol": 5e-8}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, global batch B: the reference both distributed variants must reproduce.

    Launched here and waited for at first use, so it trains while the first test starts its 2-process run.
    """
    with Launched(tmp_path_factory.mktemp("single"), 1) as launched:
        yield launched


def assert_same_training(reference, distributed, rtol=1e-4, atol=1e-6, steps=STEPS, mean_atol=None):
    """Per-step losses and every final weight agree; returns how many weight tensors differ at all.

    ``mean_atol``: also bound the mean absolute weight difference (see the curriculum tests).
    """
    (ref_losses, ref_state), (losses, state) = reference, distributed
    assert len(ref_losses) == len(losses) == steps
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-6)
    assert ref_state.keys() == state.keys()
    moved, total, count = 0, 0.0, 0
    for name, ref in ref_state.items():
        torch.testing.assert_close(state[name], ref, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")
        moved += int(not torch.equal(ref, state[name]))
        if ref.is_floating_point():
            total, count = total + float((state[name] - ref).abs().sum()), count + ref.numel()
    if mean_atol is not None:
        assert total / count < mean_atol, f"mean absolute weight difference {total / count:.2e}"
    return moved


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(["loss.gather_with_grad=true"], id="full-loss"),
        pytest.param(["loss.gather_with_grad=true", "loss.local_loss=true"], id="local-loss"),
    ],
)
def test_two_processes_with_half_batches_equal_one_process(tmp_path, single, overrides):
    with Launched(tmp_path, 2, *overrides) as distributed:
        assert_same_training(single.result(), distributed.result(), **EXACT)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(["loss.gather_with_grad=false"], id="full-loss"),
        pytest.param(["loss.gather_with_grad=false", "loss.local_loss=true"], id="local-loss"),
    ],
)
def test_gather_without_grad_fails_the_same_check(tmp_path, single, overrides):
    """The comparison has teeth: without gradients through the gather the same check fails.

    With the full loss each rank's features get the exact gradient but DDP then averages it with the
    other rank's: 1/N of the truth (gradient clipping and Adam hide most, not all, of a pure rescale).
    With the local loss the gradient misses the other ranks' rows altogether.
    """
    with Launched(tmp_path, 2, *overrides) as distributed:
        reference, (losses, state) = single.result(), distributed.result()
    assert losses[0] == pytest.approx(reference[0][0], rel=1e-5)  # same data and initial weights: step 0 agrees
    with pytest.raises(AssertionError):
        assert_same_training(reference, (losses, state), **EXACT)


# ---- curricula under DDP ------------------------------------------------------------------------------
# Stages of 2 steps: image-text (steps 1-2), +audio (3-4), +depth+thermal (5-6); +imu is never reached.
# Two stage boundaries; under progressive_frozen the first freezes text whole and the second audio.
CURRICULUM_STEPS = 6
STAGED = [
    f"trainer.max_steps={CURRICULUM_STEPS}",
    "curriculum.order=[audio,[depth,thermal],imu]",
    "curriculum.stage.steps=2",
    "curriculum.stage.warmup_steps=1",
    "checkpoint.every_n_train_steps=1",
    "loss.gather_with_grad=true",
]


# Augmentation draws per (seed, step, edge, row of the global batch): each rank augments its half as one
# process augments the whole batch, and a resumed run as an uninterrupted one.
AUGMENTED = [f"modalities.{m}.augment=default" for m in ("image", "text", "audio", "depth", "thermal")]


@pytest.fixture(scope="module")
def staged_runs(tmp_path_factory):
    """Per curriculum, trained on first use: (1-process reference, 2-process run folder, 2-process result)."""
    cache: dict[str, tuple] = {}

    def get(curriculum: str):
        if curriculum not in cache:
            root = tmp_path_factory.mktemp(curriculum)
            overrides = [f"curriculum={curriculum}", *STAGED]
            if curriculum == "progressive":  # with the distillation teacher, which every rank runs on its rows
                overrides.append("curriculum.continual.method=distill")
            if curriculum == "progressive_frozen":  # with augmentation: random per (seed, step, global row)
                overrides += AUGMENTED
            if curriculum == "unfreeze":  # image frozen in stage a, all of it trains in b, its last block in c
                overrides = [*STAGED[:1], *STAGED[4:], f"curriculum.stages={UNFREEZE}", UNLOCKED]
            # The two runs are independent: launched together, each one's start-up overlaps the other's.
            with Launched(root / "single", 1, *overrides) as single, Launched(root / "ddp", 2, *overrides) as ddp:
                cache[curriculum] = (single.result(), root / "ddp", ddp.result())
        return cache[curriculum]

    return get


UNFREEZE = (
    "[{name: a, edges: [[image,text]], steps: 2, warmup_steps: 1, freeze: [image]},"
    " {name: b, edges: [[image,audio]], steps: 2, warmup_steps: 1, unlocked_layers: {image: all}},"
    " {name: c, edges: all, warmup_steps: 1}]"
)
# The blocks below image's last are locked when DDP wraps the model, unless it registers what stage b unlocks.
UNLOCKED = "modalities.image.trunk.unlocked_layers=1"


@pytest.mark.parametrize("curriculum", ["progressive", "progressive_frozen", "unfreeze"])
def test_curricula_under_ddp_equal_one_process_through_two_stage_boundaries(staged_runs, curriculum):
    """The curriculum x DDP crash of the first release: every stage switch, freeze and idle encoder under gloo."""
    reference, run_dir, distributed = staged_runs(curriculum)
    # Every stage start gives the joining encoders fresh Adam moments, whose first updates are ~lr * g / (|g| + eps):
    # float rounding of a gradient near eps (the mean over 2 x 4 rows is summed in another order) then moves a
    # few hundred of the 2.7M weights by up to ~1e-5 (mean difference ~1e-8). A gradient DDP failed to
    # synchronise, or a rank training on its own half, moves weights by ~lr = 1e-3 on average.
    tolerance = {"atol": 1e-4, "mean_atol": 1e-7, "steps": CURRICULUM_STEPS}
    moved = assert_same_training(reference, distributed, **tolerance)
    assert moved > 0  # not trivially equal: the two runs trained
    stages = json.loads((run_dir / "metrics.json").read_text())["stages"]
    names = ["a", "b", "c"] if curriculum == "unfreeze" else ["image-text", "+audio", "+depth+thermal"]
    assert [(s["name"], s["step"]) for s in stages] == list(zip(names, [2, 4, 6], strict=True))
    if curriculum == "unfreeze":  # frozen through stage a, then trained again on both ranks alike
        at = {k: torch.load(run_dir / "checkpoints" / f"step{k:06d}.ckpt", weights_only=True)["state_dict"]
              for k in (1, 2)}  # fmt: skip
        image = [k for k in at[1] if k.startswith("model.trunks.image.")]
        assert all(torch.equal(at[1][k], at[2][k]) for k in image)
        assert any(not torch.equal(at[2][k], distributed[1][k]) for k in image)
        locked = [k for k in image if k.startswith("model.trunks.image.blocks.0.")]  # by UNLOCKED, opened in b
        assert locked and all(not torch.equal(at[2][k], distributed[1][k]) for k in locked)


def test_a_ddp_run_prints_each_line_once_and_no_third_party_noise(staged_runs):
    """Rank 1 logs to its own file and shows errors only; Lightning's advert and its LeafSpec deprecation are
    not shown (before: every info and warning line twice, once per rank, and both notices)."""
    _, run_dir, _ = staged_runs("progressive")
    console = "".join(run_dir.with_name(f"{run_dir.name}.{s}").read_text() for s in ("stdout", "stderr"))
    for stage in ("+audio", "+depth+thermal"):
        assert console.count(f"({stage}) starts at step") == 1, console
    assert "Tip:" not in console and "LeafSpec" not in console
    rank1 = (run_dir / "train_ddp_process_1.log").read_text()
    assert "(+audio) starts at step 2" in rank1  # rank 1's own log keeps its lines


def test_ddp_resume_across_a_stage_boundary_that_freezes(tmp_path, staged_runs):
    """Relaunched under DDP from step 3 (inside +audio): the boundary at 4 freezes audio; same final weights."""
    _, run_dir, (losses, state) = staged_runs("progressive_frozen")
    ckpt = run_dir / "checkpoints" / "step000003.ckpt"
    resumed = train(tmp_path, 2, "curriculum=progressive_frozen", *STAGED, *AUGMENTED, f"ckpt_path={ckpt}")
    assert_same_training((losses[3:], state), resumed, atol=1e-4, mean_atol=1e-7, steps=CURRICULUM_STEPS - 3)
