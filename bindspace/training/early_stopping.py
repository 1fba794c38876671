"""``early_stopping={metric, patience}``: stop when a validation metric stops improving, keep the best.

Small paired data overfits: held-out retrieval peaks and falls while the training loss keeps going
down. With ``early_stopping`` set, every validation (``trainer.val_check_interval``) compares
``metric`` (a logged validation value, ``val/mean_R@1`` by default) with the best so far:

- better by more than ``min_delta``: the weights are saved to ``checkpoints/best.ckpt`` (atomically;
  a checkpoint ``BindSpace.from_checkpoint`` loads) and the count of validations without improvement
  starts again;
- otherwise the count grows, and at ``patience`` the run stops.

After training, the best weights are loaded back before the final evaluation, so ``metrics.json``
scores ``best.ckpt`` (its ``early_stopping`` entry says which step that is and where the run stopped);
``last.ckpt`` stays the newest state, for resuming. Under a curriculum only the last stage counts:
earlier stages train fewer edges, so their validation numbers are not comparable with the final
graph's. The callback's state (best value and step, the count) is in every checkpoint, so a resumed
run stops exactly where an uninterrupted one would; under DDP every rank sees the same synchronised
metric and takes the same decision.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from bindspace.config import parse_early_stopping  # noqa: F401  (checked with the config; importable here too)
from bindspace.errors import ConfigError

log = logging.getLogger(__name__)


class EarlyStopping(Callback):
    """See the module docstring.

    Args:
        dirpath: the run's checkpoint folder (``best.ckpt`` goes there).
        metric, patience, mode, min_delta: as ``early_stopping``.
        counting: given the trainer, whether this validation counts (in the curriculum's last stage, after
            its first step); always, when None.
    """

    def __init__(
        self,
        dirpath: str | Path,
        metric: str = "val/mean_R@1",
        patience: int = 5,
        mode: str = "max",
        min_delta: float = 0.0,
        counting: Callable[[L.Trainer], bool] | None = None,
    ) -> None:
        self.best_path = Path(dirpath) / "best.ckpt"
        self.metric, self.patience, self.mode, self.min_delta = metric, patience, mode, min_delta
        self.counting = counting or (lambda trainer: True)
        self.best: float | None = None
        self.best_step: int | None = None
        self.wait = 0
        self.stopped_step: int | None = None

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Resumed from a checkpoint of a run that already stopped early (a requeue, the same command
        # again): ``should_stop`` is not in the checkpoint, so stop again before any further step.
        if self.stopped_step is not None:
            trainer.should_stop = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.counting(trainer):
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            logged = sorted(k for k in trainer.callback_metrics if k.startswith("val/"))
            raise ConfigError(f"early_stopping.metric={self.metric!r} was not logged; validation logs {logged}")
        value = float(value)
        if not math.isfinite(value):
            value = -math.inf if self.mode == "max" else math.inf
        if self._better(value):
            self.best, self.best_step, self.wait = value, trainer.global_step, 0
            trainer.save_checkpoint(self.best_path, weights_only=True)  # every rank calls; rank 0 writes
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_step = trainer.global_step
            trainer.should_stop = True
            log.info(
                "early stopping at step %d: %s has not improved on %.4g (step %d) for %d validation(s)",
                trainer.global_step, self.metric, self.best, self.best_step, self.wait,
            )  # fmt: skip

    def restore_best(self, pl_module: L.LightningModule) -> bool:
        """Load ``best.ckpt``'s weights into the module (before the final evaluation); False if none."""
        if self.best_step is None or not self.best_path.is_file():
            return False
        best = torch.load(self.best_path, map_location="cpu", weights_only=True)
        if best.get("global_step") != self.best_step:  # e.g. written by a later launch of this run folder
            raise ConfigError(
                f"early_stopping: {self.best_path} holds step {best.get('global_step')}, not the best step "
                f"{self.best_step} of this run (resumed from an earlier checkpoint of the same folder?); "
                "its checkpoints are kept: score the one you mean with bindspace-eval"
            )
        pl_module.load_state_dict(best["state_dict"])
        return True

    def summary(self) -> dict[str, Any]:
        """``metrics.json["early_stopping"]``."""
        return {
            "metric": self.metric,
            "mode": self.mode,
            "patience": self.patience,
            "min_delta": self.min_delta,
            "best": self.best,
            "best_step": self.best_step,
            "stopped_step": self.stopped_step,
            "checkpoint": str(self.best_path) if self.best_step is not None else None,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "wait": self.wait, "stopped_step": self.stopped_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.best_step = state_dict.get("best"), state_dict.get("best_step")
        self.wait, self.stopped_step = int(state_dict.get("wait", 0)), state_dict.get("stopped_step")
