"""The LightningModule: encode each edge's pair, sum the per-edge losses, evaluate retrieval."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor

from bindspace.evaluation.suite import embed_split, evaluate_split
from bindspace.evaluation.tables import summarize
from bindspace.graph import Edge, edge_key
from bindspace.inference import checkpoint_metadata
from bindspace.losses import MultiEdgeLoss
from bindspace.modalities import concat_inputs, input_batch_size
from bindspace.models.model import BindSpaceModel
from bindspace.training.feature_cache import FrozenFeatureCache
from bindspace.training.optim import OptimConfig, build_optimizer, describe_groups
from bindspace.training.reliability import assert_finite_weights
from bindspace.utils.environment import describe_environment, earlier_environments

log = logging.getLogger(__name__)


class AlignmentModule(L.LightningModule):
    """Trains a :class:`BindSpaceModel` on the active edges of an alignment graph.

    A training batch maps edge keys (``"image|audio"``) to that edge's batch of paired samples.
    Which edges are active is state (``active_edges``) that a curriculum callback may change;
    ``training_step`` only reads it.

    Args:
        model: the encoders.
        loss: the multi-edge contrastive loss (owns the per-edge temperatures).
        edges: every trainable edge (trained vs emergent flags in evaluation come from it).
        optim: optimizer and schedule settings.
        total_steps: length of the cosine schedule.
        seed: seeds dropout per (seed, batch, rank) (a batch: a step, or one of its accumulated batches).
        feature_cache: serves frozen encoders' features from a per-sample cache (optional).
    """

    def __init__(
        self,
        model: BindSpaceModel,
        loss: MultiEdgeLoss,
        edges: Sequence[Edge],
        optim: OptimConfig | None = None,
        total_steps: int = 1000,
        seed: int = 0,
        feature_cache: FrozenFeatureCache | None = None,
    ) -> None:
        super().__init__()
        self.model, self.loss = model, loss
        self.edges = [tuple(e) for e in edges]
        self.active_edges: list[Edge] = list(self.edges)
        # Loss weight multipliers of the current curriculum stage (replay of earlier edges).
        self.stage_weights: dict[str, float] = {}
        self.stage_index = 0
        self.optim_cfg = optim or OptimConfig()
        self.total_steps = total_steps
        self.seed = seed
        self._val_batches: list[dict] = []
        self.last_loss: Tensor | None = None
        self.grad_norm: Tensor | None = None  # set by NonFiniteGuard after backward, read by clipping
        self.step_skipped = False  # set by NonFiniteGuard: this step's update was skipped (non-finite values)
        self.feature_cache = feature_cache
        self.last_retrieval: dict[str, Any] = {}
        self.last_per_query: dict[str, Any] = {}  # per-query values of the last evaluate (per_query.npz)
        # Set by the curriculum callback with curriculum.continual.method=distill (training/continual.py).
        self.distillation = None
        self.step_encoded: dict[str, tuple[Any, Tensor]] = {}  # modality -> (inputs, embeddings) of this step
        self.step_cached: set[str] = set()  # modalities of step_encoded whose inputs are cached trunk features
        # A relaunched run: the environments of the launches that trained it before this one (on_load_checkpoint).
        self.earlier_environments: list[dict[str, Any]] = []
        # What decides the data the run draws (synthetic: bindspace.data.synthetic.scene_settings), recorded in its
        # checkpoints so that a relaunch on other data is refused (pipeline.check_training_data_unchanged).
        self.training_data: dict[str, Any] | None = None
        # Pairs trained before this run among encoders it keeps frozen (init_from + new_modality): still trained.
        self.inherited_edges: list[Edge] = []

    # ---- training -------------------------------------------------------------------------------
    def encode_edges(self, batch: dict[str, dict]) -> dict[str, tuple[Tensor, Tensor]]:
        """One forward per modality over all active edges that use it (bigger, faster matmuls).

        Frozen encoders served by the feature cache skip their tokenizer and trunk: their pooled
        features come from the cache (computed on first sight of a sample) and only the head runs.
        """
        active = [e for e in self.active_edges if edge_key(e) in batch]
        chunks: dict[str, list[tuple[str, Any]]] = {}
        for e in active:
            for m in e:
                chunks.setdefault(m, []).append((edge_key(e), batch[edge_key(e)][m]))
        cached = set(self.feature_cache.active(self.model)) if self.feature_cache is not None else set()
        keep = self.distillation is not None and self.distillation.active
        embedded, self.step_encoded, self.step_cached = {}, {}, set()
        for m, parts in chunks.items():
            sizes = [input_batch_size(x) for _, x in parts]
            if m in cached:
                feats = torch.cat([self.feature_cache.features(self.model, m, k, batch[k]["id"], x) for k, x in parts])
                emb = self.model.encode_from_features(m, feats)
                if keep:  # a cached encoder can still be distilled (its head trains): the teacher's head on them
                    self.step_encoded[m] = (feats, emb)
                    self.step_cached.add(m)
            else:
                x = concat_inputs([x for _, x in parts])
                emb = self.model.encode(m, x)
                if keep:
                    self.step_encoded[m] = (x, emb)
            embedded[m] = emb.split(sizes)
        cursor = dict.fromkeys(chunks, 0)
        pairs = {}
        for e in active:
            pair = []
            for m in e:
                pair.append(embedded[m][cursor[m]])
                cursor[m] += 1
            pairs[edge_key(e)] = (pair[0], pair[1])
        return pairs

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Dropout and stochastic depth draw from a generator seeded by (seed, batch, rank): training randomness
        # is a function of the batch, so a resumed run replays it exactly. The batch is the loader's item, the
        # step times trainer.accumulate_grad_batches plus the batch within the step (Lightning's batch_idx
        # counts them): the k batches of a step draw their own masks (one batch per step: the step).
        k = self.trainer.accumulate_grad_batches
        item = self.global_step * k + batch_idx % k
        torch.manual_seed(hash((self.seed, item, self.global_rank)) % (2**63))

    def training_step(self, batch: dict[str, dict], batch_idx: int) -> Tensor:
        pairs = self.encode_edges(batch)
        groups = {k: batch[k]["group"] for k in pairs if "group" in batch[k]}  # a manifest's group column
        total, per_edge = self.loss(pairs, self.stage_weights, groups)
        encoded, self.step_encoded = self.step_encoded, {}  # not kept past the step
        distill = self.distillation.loss(encoded, from_features=self.step_cached) if encoded else None
        if distill is not None:
            total = total + distill
        self.last_loss = total.detach()  # NonFiniteGuard reads it before the optimizer step
        bs = max(a.shape[0] for a, _ in pairs.values())
        # With local_loss each rank holds only its rows' share: the logged loss is the mean over ranks,
        # i.e. the loss of the global batch (one scalar all-reduce; nothing on a single process).
        sync = self.trainer.world_size > 1
        self.log("train/loss", total, prog_bar=True, batch_size=bs, sync_dist=sync)
        if (self.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0:
            # Diagnostics only on the steps the logger writes: a dozen self.log calls a step would cost
            # more than the whole rest of the framework's overhead over a bare loop (benchmarks/ (a)).
            self.log("stage", float(self.stage_index), batch_size=bs)
            for k, v in per_edge.items():
                self.log(f"train/loss/{k}", v, batch_size=bs, sync_dist=sync)
                self.log(f"train/logit_scale/{k}", self.loss.logit_scales[k]().detach(), batch_size=bs)
                if k in self.loss.logit_biases:  # SigLIP edges
                    self.log(f"train/logit_bias/{k}", self.loss.logit_biases[k]().detach(), batch_size=bs)
            if distill is not None:
                self.log("train/distill", distill, batch_size=bs, sync_dist=sync)
        return total

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip by the global norm NonFiniteGuard already computed (the same result as clip_grad_norm_)."""
        norm = self.grad_norm
        if gradient_clip_val is None or gradient_clip_algorithm not in (None, "norm") or norm is None:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, (gradient_clip_val / (norm + 1e-6)).clamp(max=1.0))
        self.grad_norm = None  # used once

    def configure_optimizers(self):
        opt, sched = build_optimizer(self, self.optim_cfg, self.total_steps)
        if self.global_rank == 0:  # what trains at which lr: layer decay, lr scales, unlocking and adapters
            for line in describe_groups(opt.param_groups, self.optim_cfg.lr):
                log.info("optimizer group %s", line)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- evaluation -----------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._val_batches.append(batch)

    def on_validation_epoch_end(self) -> None:
        if not self._val_batches:
            return
        # Under a curriculum, the pairs of stages still to come are emergent so far: val/trained/* averages
        # the pairs trained by now, as the stage-end records and metrics.json do.
        metrics = self.evaluate(self._val_batches, self.trained_edges())
        self._val_batches = []
        self.last_retrieval = metrics
        summary = metrics["summary"]
        for k, v in summary.items():
            self.log(f"val/{k}", v, sync_dist=True)
        mean_r1 = [v for k, v in summary.items() if k.endswith("R@1")]
        self.log("val/mean_R@1", sum(mean_r1) / max(1, len(mean_r1)), prog_bar=True, sync_dist=True)
        if metrics.get("retrieval_class"):  # labelled held-out data: the same at class level (what to stop on
            # when pairs are drawn within a class, as in spoken digits, where instance R@1 is mostly chance)
            by_class = summarize(metrics["retrieval_class"])
            for k, v in by_class.items():
                self.log(f"val/class/{k}", v, sync_dist=True)
            class_r1 = [v for k, v in by_class.items() if k.endswith("R@1")]
            self.log("val/class/mean_R@1", sum(class_r1) / max(1, len(class_r1)), sync_dist=True)
        retrieval = metrics["retrieval"]
        for a, b in self.edges:  # each edge's R@1, both directions averaged: forgetting shows per edge
            both = [retrieval[p]["R@1"] for p in (f"{a}->{b}", f"{b}->{a}") if p in retrieval]
            if both:
                self.log(f"val/R@1/{edge_key((a, b))}", sum(both) / len(both), sync_dist=True)

    def evaluate(self, batches, trained_edges: Sequence[Edge] | None = None, **suite: Any) -> dict[str, Any]:
        """Score already-collated held-out batches with the evaluation suite (:mod:`bindspace.evaluation.suite`).

        ``trained_edges`` (default: every edge of the graph) decides the trained/emergent flags; ``suite``
        passes zero-shot and gap options on (default: retrieval only, as at stage ends). Keeps the embedded
        split in ``last_embeddings`` and the per-query values in ``last_per_query``.
        """
        split = embed_split(self.model, batches)
        self.last_embeddings = split  # reused for plots and inspection after the run
        trained = list(self.edges if trained_edges is None else trained_edges)
        found = evaluate_split(self.model, split, trained, **{"gap": False, **suite})
        self.last_per_query = found.per_query
        return found.metrics

    def on_train_start(self) -> None:
        # Frozen trunks stay in eval mode even though Lightning switched the module to train mode.
        self.model.train(True)
        if self.feature_cache is not None:
            self.feature_cache.rank = self.global_rank

    def on_train_end(self) -> None:
        if self.feature_cache is not None:
            self.feature_cache.flush()
            stats = self.feature_cache.stats()
            if stats["hits"] + stats["misses"]:
                log.info("feature cache: %(hits)d hits, %(misses)d misses (hit rate %(hit_rate).2f)", stats)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        assert_finite_weights(self)  # a checkpoint with NaN/Inf weights is never written
        if self.feature_cache is not None:
            self.feature_cache.flush()  # features computed so far survive a preemption with the checkpoint
        # Everything needed to rebuild the model without Hydra (bindspace.BindSpace.from_checkpoint). "edges"
        # are the pairs readers flag as trained: those that took part in an optimisation step so far (a
        # curriculum cut short, or a checkpoint mid-curriculum, has not trained them all).
        checkpoint["bindspace"] = checkpoint_metadata(self.model, self.trained_edges(), self.edges)
        # Where these weights were trained (the commit, CPU, libraries: what else decides their floats): this
        # launch's environment, and those of the launches before it when the run was relaunched (a requeued
        # job may land on another node type).
        checkpoint["bindspace"]["environment"] = describe_environment()
        if self.earlier_environments:
            checkpoint["bindspace"]["earlier_environments"] = self.earlier_environments
        if self.training_data is not None:
            checkpoint["bindspace"]["training_data"] = dict(self.training_data)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A relaunch resumes here: the launches that trained the checkpoint are kept for the next one."""
        meta = checkpoint.get("bindspace")
        step = checkpoint.get("global_step", 0)
        if isinstance(meta, dict) and isinstance(step, int):
            self.earlier_environments = earlier_environments(meta, step)

    def trained_edges(self) -> list[Edge]:
        """Graph edges that took part in at least one optimisation step (every edge without a curriculum)."""
        callbacks = self.trainer.callbacks if self._trainer is not None else []
        counter = next((c for c in callbacks if hasattr(c, "trained_edges")), None)
        if counter is None:
            return [*self.inherited_edges, *self.edges]
        trained = set(counter.trained_edges())
        return [*self.inherited_edges, *(e for e in self.edges if edge_key(e) in trained)]

    @property
    def schedule(self):
        """The :class:`StagedSchedule` of the lr scheduler (the curriculum sets per-stage lr here)."""
        return self.lr_schedulers().lr_lambdas[0]

    def logit_scale_values(self) -> dict[str, float]:
        return self.loss.parameter_values()["logit_scales"]

    def logit_bias_values(self) -> dict[str, float]:
        """SigLIP edges' logit biases (no entry for the softmax losses' edges)."""
        return self.loss.parameter_values()["logit_biases"]
