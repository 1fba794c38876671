"""What keeps a long run alive: non-finite guards, preemption checkpoints, atomic checkpoint files.

* :class:`NonFiniteGuard` skips an optimizer step whose loss or gradients are NaN/Inf (with a warning
  and a counter) and stops training with :class:`NonFiniteError` after ``max_consecutive`` such steps
  in a row.
* :class:`Preemption` turns SIGTERM / SIGUSR1 (what SLURM sends before a time limit or a preemption)
  into "finish this step, save ``last.ckpt``, optionally ``scontrol requeue``, stop"; the next launch
  with the same run folder resumes from that checkpoint (``resume: auto``).
* :class:`AtomicCheckpointIO` writes every Lightning checkpoint to a temporary file and renames it,
  so a kill mid-write never leaves a truncated ``last.ckpt`` in place of a good one.

Every decision that must be the same on all ranks (skip this step, stop now) is all-reduced, so DDP
ranks never disagree about which step they are in.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import Tensor

from bindspace.config import parse_signal
from bindspace.training.callbacks import ends_step
from bindspace.utils.io import atomic_write

log = logging.getLogger(__name__)

DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1")


class NonFiniteError(RuntimeError):
    """Training produced non-finite values it cannot recover from (the message says where and what to do)."""


class Preempted(Exception):
    """A run stopped on a preemption signal after saving its checkpoint; relaunch to resume."""

    def __init__(self, signum: int, step: int, checkpoint: Path, requeued: bool) -> None:
        self.signum, self.step, self.checkpoint, self.requeued = signum, step, checkpoint, requeued
        name = signal.Signals(signum).name
        then = "the job was requeued" if requeued else "relaunch with the same run folder to resume"
        super().__init__(f"stopped by {name} after step {step}; checkpoint {checkpoint}; {then}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell convention for "terminated by signal N"


def _any_rank(flag: bool | int, device: torch.device) -> int:
    """The maximum of ``flag`` over ranks (one scalar all-reduce under DDP, nothing on one process)."""
    value = int(flag)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([value], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        value = int(t.item())
    return value


def first_nonfinite(named: Iterable[tuple[str, Tensor | None]]) -> str | None:
    """Name of the first tensor holding a NaN or Inf, or None (one device sync for all of them)."""
    named = [(n, t) for n, t in named if t is not None]
    if not named:
        return None
    flags = torch.stack([torch.isfinite(t).all() for _, t in named])
    if bool(flags.all()):
        return None
    return named[int((~flags).nonzero()[0])][0]


class NonFiniteGuard(L.Callback):
    """Skip optimizer steps with a non-finite loss or gradient; stop after ``max_consecutive`` in a row.

    The check runs after backward (DDP has already averaged the gradients, so a NaN on any rank shows
    on all of them) and before gradient clipping. A skipped step clears the gradients, so the
    optimizer leaves weights and moments untouched; the lr schedule still advances, as the step's
    data was consumed. The counters travel in checkpoints, so a resumed run keeps counting.

    Args:
        max_consecutive: stop with :class:`NonFiniteError` when this many steps in a row were skipped
            (0 stops at the first one).
    """

    def __init__(self, max_consecutive: int = 5) -> None:
        if max_consecutive < 0:
            raise ValueError(f"max_consecutive must be >= 0, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped = 0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        loss = getattr(pl_module, "last_loss", None)
        where, total = None, None
        if loss is not None and not bool(torch.isfinite(loss.detach())):
            where = f"loss={float(loss):g}"
        else:
            grads = [p.grad for p in params if p.grad is not None]
            # One fused kernel and one sync: any NaN/Inf in any gradient makes the total norm non-finite.
            # The norm is kept for gradient clipping (AlignmentModule.configure_gradient_clipping), which
            # then needs no second pass over the gradients.
            total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else None
            pl_module.grad_norm = total
            if total is not None and not bool(torch.isfinite(total)):
                name_of = {id(p): n for n, p in pl_module.named_parameters()}
                bad = first_nonfinite((name_of.get(id(p), "?"), p.grad) for p in params)
                where = f"gradient of {bad}"
        pl_module.step_skipped = bool(_any_rank(where is not None, pl_module.device))
        if not pl_module.step_skipped:
            self.consecutive = 0
            if total is not None and (trainer.global_step + 1) % max(1, trainer.log_every_n_steps) == 0:
                pl_module.log("train/grad_norm", total, rank_zero_only=True)  # after DDP's averaging: same on all ranks
            return
        for p in params:
            p.grad = None  # the optimizer skips parameters without gradients: nothing moves
        pl_module.grad_norm = None
        self.consecutive += 1
        self.skipped += 1
        step = trainer.global_step
        log.warning(
            "step %d: non-finite %s; step skipped (%d in a row, %d in total)",
            step, where or "value on another rank", self.consecutive, self.skipped,
        )  # fmt: skip
        pl_module.log("train/nonfinite_skipped", float(self.skipped), rank_zero_only=True)
        if self.consecutive > self.max_consecutive:
            raise NonFiniteError(
                f"{self.consecutive} consecutive steps up to step {step} had a non-finite loss or gradient "
                f"(last: {where or 'on another rank'}); stopping (nonfinite.max_consecutive="
                f"{self.max_consecutive}). Checkpoints written so far hold finite weights; lower optim.lr, "
                "check the data with `bindspace-data check`, or resume from the last checkpoint"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"consecutive": self.consecutive, "skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.consecutive = int(state_dict.get("consecutive", 0))
        self.skipped = int(state_dict.get("skipped", 0))


def assert_finite_weights(module: torch.nn.Module, where: str = "checkpoint") -> None:
    """Raise :class:`NonFiniteError` naming the first parameter or buffer with a NaN/Inf."""
    tensors = [(n, t) for n, t in module.state_dict().items() if torch.is_tensor(t) and t.is_floating_point()]
    bad = first_nonfinite(tensors)
    if bad is not None:
        raise NonFiniteError(f"refusing to write a {where} with non-finite weights ({bad} holds NaN or Inf)")


class Preemption(L.Callback):
    """SIGTERM / SIGUSR1 -> save ``last.ckpt`` at the end of the current step, requeue on SLURM, stop.

    The handler only records the signal (safe at any point of the Python program); the decision is
    taken at the next step boundary, all-reduced so every rank stops after the same step. Lightning's
    own SIGTERM/SLURM handlers are replaced for the duration of ``fit`` (they would raise
    ``SIGTERMException`` without a checkpoint, or write an ``hpc_ckpt`` the run would not look for);
    signals are forwarded to DDP children that Lightning launched, as Lightning does.

    Args:
        checkpoint: where the preemption checkpoint goes (the file ``resume: auto`` looks for).
        signals: signal names to handle.
        requeue: run ``scontrol requeue $SLURM_JOB_ID`` from rank 0 after saving (only under SLURM).
        save: optional ``fn(trainer)`` that saves the checkpoint instead of ``trainer.save_checkpoint``
            (the run's :meth:`~bindspace.training.checkpoints.RunCheckpoint.save_step`, so the preemption
            state is also its step checkpoint, written after the step's validation when one follows).
    """

    def __init__(
        self,
        checkpoint: str | Path,
        signals: Iterable[str | int] = DEFAULT_SIGNALS,
        requeue: bool = True,
        save: Callable[[L.Trainer], Any] | None = None,
    ) -> None:
        self.checkpoint = Path(checkpoint)
        self.save = save
        self.signals = [parse_signal(s) for s in signals]
        self.requeue = requeue
        self.received: int | None = None
        self.preempted: Preempted | None = None
        self._previous: dict[int, Any] = {}
        self._trainer: L.Trainer | None = None

    def _handle(self, signum: int, frame) -> None:
        first = self.received is None
        self.received = signum
        if first and self._trainer is not None:
            launcher = self._trainer.strategy.launcher
            if launcher is not None and hasattr(launcher, "kill"):
                launcher.kill(signum)  # DDP children started by Lightning get the signal too

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning registered its own handlers: ours replace them until teardown.
        self._trainer = trainer
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handle)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if not ends_step(trainer):
            # With trainer.accumulate_grad_batches=k a step is k batches: only after the last one is there a step
            # to save. Saved after an earlier one, the checkpoint counted that batch as done while the step
            # loader resumes at the step's first batch: the relaunch trained the resumed step on one batch and
            # every later batch on its predecessor's data.
            return
        signum = _any_rank(self.received or 0, pl_module.device)
        if not signum or self.preempted is not None:
            return
        # Asked to stop, Lightning validates after this step even off the validation interval. A preempted
        # run must not: the extra validation spends the grace period and counts towards early stopping and
        # curriculum plateaus, so the relaunch would not continue as the uninterrupted run does. A step that
        # validates anyway still does (the run's RunCheckpoint saves it after the validation; a resume does not
        # redo it).
        loop = trainer.fit_loop.epoch_loop
        if not loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            trainer.limit_val_batches = 0
        if self.save is not None:
            self.save(trainer)
        else:
            trainer.save_checkpoint(self.checkpoint)
        requeued = False
        if trainer.is_global_zero and self.requeue and os.environ.get("SLURM_JOB_ID"):
            requeued = _scontrol_requeue()
        self.preempted = Preempted(signum, trainer.global_step, self.checkpoint, requeued)
        log.warning("preemption: %s", self.preempted)
        trainer.should_stop = True

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Only where our handler is still installed: Lightning's own teardown runs first and has already put
        # back what was there before fit. Restoring ours over it would reinstall Lightning's handler of this
        # fit, which holds the trainer (model, optimizer, data) alive after fit, and the next fit of the
        # process (a sweep's next job) chains it into its own: every job of a sweep stayed in memory.
        for s, handler in self._previous.items():
            if signal.getsignal(s) == self._handle:
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}
        self._trainer = None


def _scontrol_requeue() -> bool:
    job = os.environ["SLURM_JOB_ID"]
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("preemption: could not requeue SLURM job %s (%s)", job, err)
        return False
    if done.returncode != 0:
        log.warning("preemption: scontrol requeue %s failed: %s", job, done.stderr.strip())
    return done.returncode == 0


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file beside the target, fsynced, then renamed."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_write(Path(path), lambda f: torch.save(checkpoint, f))
