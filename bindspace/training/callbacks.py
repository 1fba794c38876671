"""The one Lightning callback that runs a curriculum: stages switch edges, freeze encoders, set the lr.

Nothing in ``training_step`` knows about stages: this callback sets the module's active edges and
stage weights, freezes and unfreezes encoders (dropping the optimizer state of what it freezes),
tells the data which edges to draw, re-warms the lr, evaluates the full retrieval matrix at every
stage boundary and keeps that history, and saves its position in checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import lightning as L

from bindspace.curriculum import Curriculum, CurriculumState
from bindspace.evaluation.tables import summarize
from bindspace.losses import edge_key

log = logging.getLogger(__name__)


class CurriculumCallback(L.Callback):
    """Drives a :class:`Curriculum` over a training run.

    Args:
        curriculum: the resolved stages.
        steps_per_epoch: steps in one pass over an edge's data (for stages measured in epochs).
        stage_hook: optional ``fn(trainer, module, record)`` called with each stage-end record
            (used to log heatmaps to wandb).
    """

    def __init__(self, curriculum: Curriculum, steps_per_epoch: int = 1, stage_hook=None) -> None:
        self.curriculum = curriculum
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.state = CurriculumState()
        self.stage_hook = stage_hook
        self._restored = False

    # ---- lifecycle ------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "stage_edges"):
            dm.stage_edges = [self.curriculum.edges(i) for i in range(len(self.curriculum.stages))]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After any checkpoint restore: the stored state (or stage 0) decides what trains now.
        self._apply(trainer, pl_module, drop_state=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.state.stage_done(self.curriculum, step, self.steps_per_epoch):
            self._record(trainer, pl_module, step)
            self.state.advance(step)
            log.info("curriculum: stage %d (%s) starts at step %d", self.state.index, self.stage.name, step)
            self._apply(trainer, pl_module, drop_state=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        plateau = self.stage.plateau
        if plateau is None or trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(plateau.metric)
        if value is None:
            logged = sorted(trainer.callback_metrics)
            raise KeyError(f"curriculum plateau metric {plateau.metric!r} was not logged; logged: {logged}")
        self.state.observe(float(value), plateau)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, pl_module, trainer.global_step)

    # ---- checkpointing ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.state)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.state = CurriculumState(**state_dict)

    # ---- internals --------------------------------------------------------------------------------
    @property
    def stage(self):
        return self.curriculum.stages[self.state.index]

    def _apply(self, trainer: L.Trainer, module, drop_state: bool) -> None:
        i, stage = self.state.index, self.stage
        module.stage_index = i
        module.active_edges = self.curriculum.edges(i)
        module.stage_weights = self.curriculum.edge_weights(i)
        frozen = self.curriculum.frozen(i)
        model = module.model
        for m in model.modalities:
            if model.configs[m].trunk.freeze:
                continue  # frozen by its config for the whole run
            was_trainable = any(p.requires_grad for p in model.trunks[m].parameters())
            model.set_frozen(m, trunk=m in frozen)
            if drop_state and was_trainable and m in frozen:
                self._drop_optimizer_state(trainer, model.trunks[m].parameters())
                self._drop_optimizer_state(trainer, model.preprocessors[m].parameters())
        model.train(module.training)
        if trainer.datamodule is not None and hasattr(trainer.datamodule, "set_stage"):
            trainer.datamodule.set_stage(i)
        if trainer.lr_scheduler_configs:
            scale = stage.lr / module.optim_cfg.lr if stage.lr is not None else 1.0
            module.schedule.set_stage(self.state.start_step, stage.warmup_steps, scale)

    @staticmethod
    def _drop_optimizer_state(trainer: L.Trainer, params) -> None:
        """A frozen encoder gets no optimizer state: free its Adam moments (they restart if unfrozen)."""
        for opt in trainer.optimizers:
            for p in params:
                opt.state.pop(p, None)

    def _record(self, trainer: L.Trainer, module, step: int) -> None:
        """Full retrieval matrix on the validation set at the end of a stage (forgetting and transfer)."""
        if any(r["name"] == self.stage.name and r["index"] == self.state.index for r in self.state.history):
            return
        dm = trainer.datamodule
        so_far = [e for s in self.curriculum.stages[: self.state.index + 1] for e in s.new_edges]
        if dm is None or not hasattr(dm, "val_dataloader"):
            metrics = {"retrieval": {}}  # trained from bare dataloaders (benchmarks): no held-out set to score
        else:
            metrics = module.evaluate(list(dm.val_dataloader()), trained_edges=so_far)
        record = {
            "index": self.state.index,
            "name": self.stage.name,
            "step": int(step),
            "edges": [edge_key(e) for e in self.curriculum.edges(self.state.index)],
            "frozen": sorted(self.curriculum.frozen(self.state.index)),
            "summary": summarize(metrics["retrieval"]),
            "retrieval": metrics["retrieval"],
        }
        self.state.history.append(record)
        if self.stage_hook is not None:
            self.stage_hook(trainer, module, record)
