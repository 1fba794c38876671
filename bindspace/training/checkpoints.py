"""Checkpoints that are what they say: the final state always saved, one ``last.ckpt`` that is the newest.

Lightning's ``ModelCheckpoint`` with ``every_n_train_steps`` saves nothing after the last multiple of
the interval (a 300-step run with interval 200 ends with step 200 on disk), and, finding a
``last.ckpt`` from an earlier launch of the same run folder, writes ``last-v1.ckpt`` beside it instead
of replacing it, so the next ``resume: auto`` goes back in time. :class:`RunCheckpoint` fixes both:
``last.ckpt`` is replaced in place (atomically, by :class:`~bindspace.training.reliability.AtomicCheckpointIO`)
and the run's final step is saved whatever the interval.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from bindspace.errors import ConfigError

log = logging.getLogger(__name__)


class RunCheckpoint(ModelCheckpoint):
    """``step{N:06d}.ckpt`` every ``every_n_train_steps`` and at the end, and ``last.ckpt`` always the newest.

    Args:
        dirpath: the run's checkpoint folder.
        every_n_train_steps: interval of the periodic checkpoints.
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="step{step:06d}",
            auto_insert_metric_name=False,
            save_last=True,
            save_top_k=-1,
            every_n_train_steps=every_n_train_steps,
            enable_version_counter=False,  # replace last.ckpt (and a step file of the same step), never -vN
        )

    @property
    def last_path(self) -> Path:
        return Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"

    def save_now(self, trainer: L.Trainer) -> Path:
        """Save the current state as its step checkpoint and as ``last.ckpt`` (once per step)."""
        if self._last_global_step_saved != trainer.global_step or not self._last_checkpoint_saved:
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        return self.last_path

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """A bad input met mid-run (a data file that fails to decode): keep the progress made so far.

        The failing batch was never trained on, so the state is that of the last completed step; the
        next launch resumes from it once the file is fixed (or with ``data.on_error=skip``). Under DDP
        only the rank that met the file knows, so it writes ``last.ckpt`` itself, without the
        collective barrier of ``trainer.save_checkpoint`` (DDP weights are the same on every rank).
        """
        if not isinstance(exception, ConfigError) or trainer.global_step == 0:
            return
        try:
            if trainer.world_size == 1:
                self.save_now(trainer)
            else:
                checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
                trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, self.last_path)
        except Exception as err:  # never hide the data error behind a checkpointing one
            log.warning("could not save %s after the data error (%s)", self.last_path, err)
            return
        log.warning("saved %s at step %d before stopping on the data error", self.last_path, trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning orders checkpoint callbacks last, so every other callback's end-of-run state is in.
        if trainer.global_step > 0:
            self.save_now(trainer)
