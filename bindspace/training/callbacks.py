"""The one Lightning callback that runs a curriculum: stages switch edges, freeze encoders, set the lr.

Nothing in ``training_step`` knows about stages: this callback sets the module's active edges and
stage weights, freezes and unfreezes encoder parts and edge temperatures (dropping the optimizer state
of what it freezes), tells the data which edges to draw, sets the stage's learning-rate schedule,
evaluates the full retrieval matrix at every stage end, counts the steps each edge trained, keeps the
per-pair validation history, and saves all of it in checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import lightning as L
import numpy as np

from bindspace.curriculum import Curriculum, CurriculumState
from bindspace.data.base import PairedDataModule
from bindspace.errors import ConfigError
from bindspace.evaluation.tables import summarize
from bindspace.graph import edge_key
from bindspace.training.continual import StageDistillation
from bindspace.training.distributed import unlock_every_stage

log = logging.getLogger(__name__)


def ends_step(trainer: L.Trainer) -> bool:
    """Whether the batch that just ran is the last of its optimisation step (``trainer.accumulate_grad_batches``
    batches make a step; the last batch of an epoch ends one too). Lightning's own test, which is private."""
    return not trainer.fit_loop._should_accumulate()


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
        self._applied = False  # the current stage was applied to the module (at train start or a stage change)
        continual = curriculum.continual
        self.distillation = StageDistillation(continual.weight) if continual.method == "distill" else None

    # ---- lifecycle ------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # before DDP wraps the model: it registers what requires a gradient now
            unlock_every_stage(pl_module.model, self.curriculum)
        dm = trainer.datamodule
        if isinstance(dm, PairedDataModule):  # else: trained from bare dataloaders (benchmarks)
            stages = [self.curriculum.edges(i) for i in range(len(self.curriculum.stages))]
            dm.set_stages(stages, self.curriculum.fixed_starts(self.steps_per_epoch))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After any checkpoint restore: the stored state (or stage 0) decides what trains now.
        self._check_planned_start(trainer)
        self._apply(trainer, pl_module, drop_state=False)
        step = trainer.global_step
        ended = [r for r in self.state.history if r["index"] == self.state.index and r["step"] == step]
        if step > 0 and ended and ended[-1].get("end") == "stage":
            # trainer.max_steps stopped the run exactly where its stage ends: the stage was recorded as ended,
            # but the next one was not started (the run ended there). A relaunch with more steps starts it now,
            # as the uninterrupted run did after that step: the next step trains the next stage's edges, and its
            # freezing, schedule and distillation teacher are taken from the weights of this step. (The record,
            # not stage_done: a plateau counted by the validation after that step ends the stage a step later.)
            self._start_next_stage(trainer, pl_module, step)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A relaunch of a finished run (resumed at trainer.max_steps) trains nothing, and Lightning skips
        # on_train_start: the restored stage (its freezing, edges and teacher) is applied here instead, so
        # what follows fit (trainable_params, the final evaluation) sees the stage the run ended in.
        if not self._applied:
            self._apply(trainer, pl_module, drop_state=False)

    def _check_planned_start(self, trainer: L.Trainer) -> None:
        """A stream that draws each step's stage by the planned stage starts (``data=shards``) cannot resume a
        stage that started elsewhere: the epoch length changed since (``data.batch_size`` or the world size)."""
        dm, i = trainer.datamodule, self.state.index
        if not hasattr(getattr(dm, "train_steps", None), "step_keys"):
            return
        planned = self.curriculum.fixed_starts(self.steps_per_epoch)[i]
        if planned is not None and planned != self.state.start_step:
            raise ConfigError(
                f"curriculum.stages[{i}] ({self.stage.name}) started at step {self.state.start_step} in the "
                f"checkpoint, but its planned start is now step {planned} ({self.steps_per_epoch} steps per "
                "epoch): data=shards draws each step's stage by its planned start; resume with the "
                "data.batch_size, world size and trainer.accumulate_grad_batches the run started with"
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # With trainer.accumulate_grad_batches=k a step takes k batches: the curriculum acts once per step, after
        # its last batch (a stage changed after another batch trained the step's later batches on the next
        # stage's edges, and every batch counted as a step of its edges).
        if not ends_step(trainer):
            return
        step = trainer.global_step
        if not getattr(pl_module, "step_skipped", False):  # a step the non-finite guard skipped trained nothing
            for e in pl_module.active_edges:
                key = edge_key(e)
                if key in batch:
                    self.state.edge_steps[key] = self.state.edge_steps.get(key, 0) + 1
        if trainer.max_steps is not None and step >= trainer.max_steps > 0:
            # The run ends here: so does its stage, unless a relaunch with more steps continues it.
            stage_over = self.state.stage_done(self.curriculum, step, self.steps_per_epoch)
            self._record(trainer, pl_module, step, end="stage" if stage_over else "run")
        elif self.state.stage_done(self.curriculum, step, self.steps_per_epoch):
            self._record(trainer, pl_module, step)
            self._start_next_stage(trainer, pl_module, step)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        retrieval = (getattr(pl_module, "last_retrieval", None) or {}).get("retrieval")
        if retrieval:
            r1 = {pair: float(entry["R@1"]) for pair, entry in retrieval.items()}
            point = {"step": int(trainer.global_step), "stage": self.state.index, "R@1": r1}
            self.state.validation = [v for v in self.state.validation if v["step"] != point["step"]] + [point]
        plateau = self.stage.plateau
        if plateau is None or not self.stage_has_trained(trainer):
            return
        value = trainer.callback_metrics.get(plateau.metric)
        if value is None:
            logged = sorted(trainer.callback_metrics)
            raise KeyError(f"curriculum plateau metric {plateau.metric!r} was not logged; logged: {logged}")
        self.state.observe(float(value), plateau)

    def stage_has_trained(self, trainer: L.Trainer) -> bool:
        """Whether a step of the current stage has trained. A stage starts after the step that ended the one
        before, and Lightning validates after that step: that validation scores the previous stage's weights."""
        return trainer.global_step > self.state.start_step

    def in_last_stage(self, trainer: L.Trainer) -> bool:
        """In the last stage, once a step of it has trained: where early stopping's validations count (its
        best checkpoint has then trained every pair that metrics.json flags as trained)."""
        return self.state.index == len(self.curriculum.stages) - 1 and self.stage_has_trained(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Early stopping ended the run mid-stage: the stage's record, as a run stopped by trainer.max_steps gets.
        stopped = any(getattr(c, "stopped_step", None) == trainer.global_step for c in trainer.callbacks)
        if stopped and trainer.global_step > 0:
            self._record(trainer, pl_module, trainer.global_step, end="run")

    # ---- what the run reports ---------------------------------------------------------------------
    def trained_edges(self) -> list[str]:
        """Edge keys that took part in at least one optimisation step, in graph order."""
        return [k for k in self._graph_keys() if self.state.edge_steps.get(k, 0) > 0]

    def stages_not_reached(self) -> list[str]:
        """Names of the stages the run never started."""
        return [s.name for s in self.curriculum.stages[self.state.index + 1 :]]

    def _graph_keys(self) -> list[str]:
        return [edge_key(e) for s in self.curriculum.stages for e in s.new_edges]

    # ---- checkpointing ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = dataclasses.asdict(self.state)
        if self.distillation is not None:
            state["distillation"] = self.distillation.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        distillation = state_dict.pop("distillation", None)
        if self.distillation is not None and distillation is not None:
            self.distillation.load_state_dict(distillation)
        self.state = CurriculumState(**state_dict)

    # ---- internals --------------------------------------------------------------------------------
    @property
    def stage(self):
        return self.curriculum.stages[self.state.index]

    def _start_next_stage(self, trainer: L.Trainer, module, step: int) -> None:
        self.state.advance(step)
        log.info("curriculum: stage %d (%s) starts at step %d", self.state.index, self.stage.name, step)
        self._apply(trainer, module, drop_state=True)

    def _apply(self, trainer: L.Trainer, module, drop_state: bool) -> None:
        self._applied = True
        i = self.state.index
        module.stage_index = i
        module.active_edges = self.curriculum.edges(i)
        module.stage_weights = self.curriculum.edge_weights(i)
        model, frozen_parts = module.model, self.curriculum.frozen_parts(i)
        newly_frozen = []
        for m in model.modalities:
            trainable = [p for p in model.encoder_parameters(m) if p.requires_grad]
            model.set_frozen(m, frozen_parts.get(m, ()), self.stage.unlocked_layers.get(m))
            newly_frozen += [p for p in trainable if not p.requires_grad]
        whole = self.curriculum.wholly_frozen(i)
        frozen_edges = {edge_key(e) for e in module.loss.edges if e[0] in whole and e[1] in whole}
        newly_frozen += module.loss.set_frozen_edges(frozen_edges)
        if drop_state:
            self._drop_optimizer_state(trainer, newly_frozen)
        if self.distillation is not None:
            if drop_state:  # a new stage: the encoders as they are now are what it must not forget
                self.distillation.snapshot(model, self.curriculum.distilled(i))
            else:  # start or resume: the teacher restored from the checkpoint, if any
                self.distillation.restore(model)
            module.distillation = self.distillation
        model.train(module.training)
        if isinstance(trainer.datamodule, PairedDataModule):
            trainer.datamodule.set_stage(i)
        self._set_schedule(trainer, module)

    def _set_schedule(self, trainer: L.Trainer, module) -> None:
        """The stage's lr schedule, applied from this step on (the scheduler already stepped for it)."""
        if not trainer.lr_scheduler_configs:
            return
        stage, i = self.stage, self.state.index
        scale = stage.lr / module.optim_cfg.lr if stage.lr is not None else 1.0
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else module.total_steps
        length = self.curriculum.schedule_length(i, self.state.start_step, max_steps, self.steps_per_epoch)
        schedule = module.schedule
        schedule.mode = self.curriculum.schedule
        schedule.set_stage(self.state.start_step, stage.warmup_steps, scale, length)
        # Lightning steps the scheduler before on_train_batch_end, so the lr of the coming step was set
        # with the previous stage's schedule: set it again from the new one.
        scheduler = trainer.lr_scheduler_configs[0].scheduler
        for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * fn(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]

    @staticmethod
    def _drop_optimizer_state(trainer: L.Trainer, params) -> None:
        """A frozen parameter gets no optimizer state: free its Adam moments (they restart if unfrozen)."""
        for opt in trainer.optimizers:
            for p in params:
                opt.state.pop(p, None)

    def _record(self, trainer: L.Trainer, module, step: int, end: str = "stage") -> None:
        """Full retrieval matrix on the validation set at the end of a stage (forgetting and transfer).

        ``end`` says what ended it: ``stage`` (its length, plateau or the run at its last step) or ``run``
        (the run stopped mid-stage). A relaunch with more steps continues such a stage, and its record is
        replaced when the stage really ends.
        """
        previous = [r for r in self.state.history if r["index"] == self.state.index]
        if previous:
            if previous[-1].get("end", "stage") != "run" or previous[-1]["step"] >= step:
                return
            self.state.history.remove(previous[-1])
        dm = trainer.datamodule
        trained = self.trained_edges()
        edges_by_key = {edge_key(e): e for s in self.curriculum.stages for e in s.new_edges}
        if not isinstance(dm, PairedDataModule):
            metrics = {"retrieval": {}}  # trained from bare dataloaders (benchmarks): no held-out set to score
        else:
            metrics = module.evaluate(list(dm.val_dataloader()), trained_edges=[edges_by_key[k] for k in trained])
        record = {
            "index": self.state.index,
            "name": self.stage.name,
            "start_step": int(self.state.start_step),
            "step": int(step),
            "end": end,
            "edges": [edge_key(e) for e in self.curriculum.edges(self.state.index)],
            "trained_edges": trained,
            "frozen": sorted(self.curriculum.frozen(self.state.index)),
            "frozen_parts": list(self.stage.freeze_parts) if self.stage.freeze else [],
            "summary": summarize(metrics["retrieval"]),
            "retrieval": metrics["retrieval"],
            "gallery_size": metrics.get("gallery_size"),  # the validation set's: what chance is relative to
            "chance": metrics.get("chance"),
        }
        self.state.history.append(record)
        if self.stage_hook is not None:
            self.stage_hook(trainer, module, record)


def reset_peak_rss() -> bool:
    """Reset this process's resident-set high-water mark (Linux >= 4.0: ``VmHWM``); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return peak_rss_kib() is not None


def peak_rss_kib() -> int | None:
    """This process's resident-set high-water mark in KiB since start or the last :func:`reset_peak_rss`."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class StepCost(L.Callback):
    """What a training step costs, for ``metrics.json["step_cost"]``: wall time per step and peak memory.

    Step time is measured from batch start to batch end on rank 0 (data loading excluded: it overlaps
    in the workers), summed over the batches of a step (``trainer.accumulate_grad_batches``), over the
    steps after the first ``skip`` (compilation, allocator warm-up); peak
    memory is the resident-set high-water mark and, on CUDA, the allocator's ``max_memory_allocated``.
    On Linux the high-water mark is reset when training starts (``/proc/self/clear_refs``), so it is this
    job's even when a sweep runs its jobs one after another in one process (Hydra's basic launcher);
    elsewhere it is the process's (``ru_maxrss``). A resumed run times its own steps only.
    """

    def __init__(self, skip: int = 3) -> None:
        self.skip, self.times = skip, []
        self._start: float | None = None
        self._step = 0.0  # time of the step's batches so far
        self._peak_reset = False

    def on_train_start(self, trainer, pl_module) -> None:
        self._peak_reset = reset_peak_rss()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import time

        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import time

        if self._start is not None:
            self._step += time.perf_counter() - self._start
        if ends_step(trainer):
            self.times.append(self._step)
            self._step = 0.0

    def summary(self, device: Any = None) -> dict[str, Any]:
        import resource
        import statistics
        import sys

        import torch

        timed = self.times[self.skip :] or self.times
        hwm = peak_rss_kib() if self._peak_reset else None
        if hwm is None:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
            hwm = rss / 2**10 if sys.platform == "darwin" else rss
        out: dict[str, Any] = {
            "steps_timed": len(timed),
            "step_ms_median": round(1e3 * statistics.median(timed), 2) if timed else None,
            "step_ms_p90": round(1e3 * float(np.quantile(timed, 0.9)), 2) if timed else None,
            "peak_rss_mib": round(hwm / 2**10, 1),
            "peak_rss_scope": "job" if self._peak_reset else "process",
        }
        if device is not None and getattr(device, "type", "") == "cuda":
            out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        return out
