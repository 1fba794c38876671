"""The lr schedule across a relaunch: stages resume, the run's length is the relaunch's."""

from __future__ import annotations

import pytest
import torch

from bindspace.config import OptimConfig
from bindspace.training.optim import build_optimizer

STAGE_STEPS = 4


def launch(max_steps: int, mode: str):
    """The scheduler of a launch with ``trainer.max_steps=max_steps`` (2 warmup steps, cosine to 0)."""
    _, scheduler = build_optimizer(torch.nn.Linear(2, 2), OptimConfig(warmup_steps=2), max_steps)
    scheduler.lr_lambdas[0].mode = mode
    return scheduler


def set_stage(scheduler, start: int, max_steps: int) -> None:
    """As ``CurriculumCallback._set_schedule``: stages of 4 steps re-warming over 1, the last one to max_steps."""
    length = STAGE_STEPS if start == 0 else max_steps - start
    scheduler.lr_lambdas[0].set_stage(start, 1, 1.0, length)


def train(scheduler, steps: int) -> None:
    for _ in range(steps):
        scheduler.optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("mode", ["global", "per_stage"])
def test_a_run_relaunched_with_more_steps_follows_the_uninterrupted_schedule(mode):
    """Stopped by max_steps=4 at a stage boundary, relaunched with max_steps=8: the lr of steps 4-7 is the
    uninterrupted 8-step run's. LambdaLR restored the first launch's length (4) too, and global mode then
    trained every step past it at lr 0."""
    first = launch(4, mode)
    set_stage(first, 0, 4)
    train(first, 4)
    relaunched = launch(8, mode)
    relaunched.load_state_dict(first.state_dict())
    restored = relaunched.lr_lambdas[0]
    assert (restored.stage_start, restored.stage_length, restored.total) == (0, STAGE_STEPS, 8)
    set_stage(relaunched, 4, 8)

    uninterrupted = launch(8, mode)
    set_stage(uninterrupted, 0, 8)
    train(uninterrupted, 4)
    set_stage(uninterrupted, 4, 8)

    assert relaunched.last_epoch == uninterrupted.last_epoch == 4
    expected = [uninterrupted.lr_lambdas[0](s) for s in range(4, 8)]
    assert all(m > 0 for m in expected)
    assert [restored(s) for s in range(4, 8)] == expected
