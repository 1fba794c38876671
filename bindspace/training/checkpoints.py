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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from bindspace.errors import ConfigError
from bindspace.models.model import STAGES
from bindspace.training.callbacks import ends_step

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
        self._inside_step = False  # the last batch trained was not the last of its step (accumulation)

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

    def save_step(self, trainer: L.Trainer) -> Path:
        """:meth:`save_now` at the end of a training step, or after the step's validation when one follows.

        Called from ``on_train_batch_end`` (the preemption checkpoint). See :meth:`on_train_batch_end`.
        """
        if validates_after_this_step(trainer):
            self._defer_save_until_validation = True
        else:
            self.save_now(trainer)
        return self.last_path

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        """The checkpoint of a step that validates is written once, after the validation (:meth:`on_validation_end`).

        Written before it (Lightning's order), it was the newest ``last.ckpt`` for the whole validation
        without what the validation decides (early stopping's best, patience and stop, the curriculum's
        plateau counters and validation history), and a resume from it does not validate that step again
        (Lightning counts the validation as done). A run killed during the validation, or between the
        ``best.ckpt`` the validation wrote and the checkpoint saved again after it, resumed from that step
        with the early-stopping state of the step before: it kept another best, stopped elsewhere, or
        failed at the end because ``best.ckpt`` held a step its state did not name. Now such a run resumes
        from the checkpoint before and repeats the steps and the validation, as the uninterrupted run did.

        It also notes whether the batch left a step of ``trainer.accumulate_grad_batches`` unfinished
        (:meth:`on_exception`).
        """
        self._inside_step = not ends_step(trainer)
        due = self._every_n_train_steps >= 1 and trainer.global_step % self._every_n_train_steps == 0
        if due and self._last_global_step_saved != trainer.global_step and validates_after_this_step(trainer):
            self._defer_save_until_validation = True  # Lightning's flag: saved in on_validation_end
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The checkpoint of a step that validated, with what the validation decided.

        Lightning orders checkpoint callbacks last, so the other callbacks' ``on_validation_end`` ran
        (early stopping's ``best.ckpt`` is on disk before the ``last.ckpt`` that names it). A step saved
        before its validation all the same (the check of :meth:`on_train_batch_end` did not foresee it) is
        saved again.
        """
        if trainer.sanity_checking or trainer.state.fn != "fit" or trainer.global_step == 0:
            super().on_validation_end(trainer, pl_module)
            return
        saved = self._last_global_step_saved == trainer.global_step and self._last_checkpoint_saved
        if not (self._defer_save_until_validation or saved):
            super().on_validation_end(trainer, pl_module)
            return
        self._defer_save_until_validation = False
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """A bad input met mid-run (a data file that fails to decode): keep the progress made so far.

        The failing batch was never trained on, so the state is that of the last completed step; the
        next launch resumes from it once the file is fixed (or with ``data.on_error=skip``). Under DDP
        only the rank that met the file knows, so it writes ``last.ckpt`` itself, without the
        collective barrier of ``trainer.save_checkpoint`` (DDP weights are the same on every rank).

        Not inside a step of ``trainer.accumulate_grad_batches=k`` whose earlier batches trained: such a
        checkpoint counts them as done while their gradients are lost, and the relaunch, whose step loader
        starts at the step's first batch, trained every later batch on its predecessor's data. The newest
        checkpoint of a whole step is kept instead. Nor in the validation of a step whose checkpoint waits
        for it (:meth:`on_train_batch_end`): a relaunch does not validate a saved step again, so that
        checkpoint would lack the validation's decisions; the one before is kept, and the relaunch repeats
        the steps and the validation.
        """
        if not isinstance(exception, ConfigError) or trainer.global_step == 0:
            return
        if self._inside_step:
            why = f"inside an accumulated step (trainer.accumulate_grad_batches={trainer.accumulate_grad_batches})"
        elif self._defer_save_until_validation:
            why = f"in the validation of step {trainer.global_step}, whose checkpoint waits for that validation"
        else:
            why = None
        if why is not None:
            log.warning(
                "not saving %s after the data error: it came %s; a relaunch resumes from the newest checkpoint "
                "before it and repeats what followed", self.last_path, why,
            )  # fmt: skip
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


def validates_after_this_step(trainer: L.Trainer) -> bool:
    """Whether Lightning validates right after the training batch that just ended (in ``on_train_batch_end``).

    Lightning's own test, which is private; with a validation interval in steps it reads the trainer's state
    only (the batch, ``should_stop``, ``limit_val_batches``), so every rank answers alike.
    """
    if trainer.state.fn != "fit" or trainer.sanity_checking:
        return False
    loop = trainer.fit_loop
    return bool(loop.epoch_loop._should_check_val_fx(loop._data_fetcher))


# ---- init_from: a fresh run seeded with another checkpoint's weights ------------------------------
# What must agree between a checkpoint's encoder and the config's for its weights to mean the same
# function. Shapes catch widths, depths and geometry; these also catch what no shape records.
ARCHITECTURE_KEYS = {
    "trunk": ("kind", "name", "width", "depth", "heads", "mlp_ratio", "pre_norm", "kv_bias", "norm_eps"),
    "head": ("pool",),
    "input": ("tokenizer",),
}
MAX_NAMED = 4  # keys named in one error line


@dataclass
class InitSource:
    """The checkpoint ``init_from`` names, read once (``weights_only``) and checked for bindspace's layout.

    Attributes:
        path: the file, as given.
        state: its ``state_dict`` (``model.*`` encoder weights, ``loss.logit_scales.*`` temperatures).
        meta: its ``checkpoint["bindspace"]`` model description, or None (checkpoints older than it).
        modalities: the modalities it holds weights for, in the order its model lists them.
    """

    path: str
    state: Mapping[str, Any]
    meta: Mapping[str, Any] | None
    modalities: list[str]


def read_init_source(path: str) -> InitSource:
    """``torch.load(path, weights_only=True)`` (a file carrying code is refused) -> :class:`InitSource`.

    Raises:
        ConfigError: missing or unreadable file, or one without any bindspace encoder weights.
    """
    from bindspace.inference import load_checkpoint

    ckpt = load_checkpoint(path, key="init_from")
    state = ckpt["state_dict"]
    found = dict.fromkeys(m for m in map(_encoder_modality, state) if m is not None)
    if not found:
        raise ConfigError(
            f"init_from: {path}: no encoder weights (model.<preprocessors|trunks|heads>.<modality>.*) in its "
            "state_dict; is it a bindspace checkpoint? (an ImageBind .pth: bindspace-convert imagebind first)"
        )
    meta = ckpt.get("bindspace") if isinstance(ckpt.get("bindspace"), Mapping) else None
    if meta is not None:
        check_metadata_layout(meta, f"init_from: {path}")
    return InitSource(str(path), state, meta, list(found))


def check_metadata_layout(meta: Mapping[str, Any], where: str) -> None:
    """``modalities`` a mapping of modality configs and ``edges`` a list of modality pairs, or a ConfigError.

    A checkpoint's model description is data someone else wrote: what is read from it must have the
    layout :func:`~bindspace.inference.checkpoint_metadata` writes before anything uses it.
    """
    modalities = meta.get("modalities")
    if not isinstance(modalities, Mapping):
        raise ConfigError(f"{where}: bindspace metadata modalities is {type(modalities).__name__}, not a mapping")
    for m, section in modalities.items():
        if not isinstance(m, str) or not isinstance(section, Mapping):
            raise ConfigError(f"{where}: bindspace metadata modalities.{m}: {type(section).__name__}, not a mapping")
    for key in ("edges", "graph_edges"):
        edges = meta.get(key) or []
        if not isinstance(edges, list) or not all(
            isinstance(e, list | tuple) and len(e) == 2 and all(isinstance(x, str) for x in e) for e in edges
        ):
            raise ConfigError(f"{where}: bindspace metadata {key} must be a list of modality pairs, got {edges!r:.80}")


def _encoder_modality(key: str) -> str | None:
    """``model.trunks.audio.blocks.0...`` -> ``audio``; None for anything that is not an encoder weight."""
    parts = key.split(".")
    return parts[2] if len(parts) > 3 and parts[0] == "model" and parts[1] in STAGES else None


def _named(items: list[str]) -> str:
    more = f", ... (+{len(items) - MAX_NAMED} more)" if len(items) > MAX_NAMED else ""
    return "; ".join(items[:MAX_NAMED]) + more


def _architecture_differences(source: InitSource, model, modality: str) -> list[str]:
    """``modalities.<m>.trunk.heads: 8 in the checkpoint, 16 in this config`` for each architecture key that differs."""
    recorded = ((source.meta or {}).get("modalities") or {}).get(modality)
    if not isinstance(recorded, Mapping):
        return []  # an older checkpoint: its shapes are all there is to compare
    from bindspace.modalities import get_modality

    try:
        theirs = get_modality(modality).config_from_dict(recorded)
    except (ConfigError, TypeError, ValueError, KeyError) as err:
        where = f"init_from: {source.path}: modalities.{modality}"
        raise ConfigError(f"{where}: unreadable model description ({err})") from None
    ours, out = model.configs[modality], []
    for section, keys in ARCHITECTURE_KEYS.items():
        for key in keys:
            a = getattr(getattr(theirs, section), key, None)
            b = getattr(getattr(ours, section), key, None)
            if a != b:
                out.append(f"modalities.{modality}.{section}.{key}: {a!r} in the checkpoint, {b!r} in this config")
    return out


def _their_weights(source: InitSource, model, modalities: list[str]) -> tuple[dict[str, Any], set[str]]:
    """``source``'s encoder weights of ``modalities`` under this model's names, and the adapter weights
    this model may start fresh.

    A trunk the config gives an adapter (``trunk.adapter``, peft) names each adapted layer's weight
    ``<layer>.base_layer.<param>``; a checkpoint without that adapter (a converted ImageBind, an earlier
    run) holds it as ``<layer>.<param>``, loaded there. The adapter's own weights then start at their
    initialisation (LoRA's zero ``B``: the model starts exactly at the checkpoint's function).
    """
    from bindspace.nn.adapters import adapter_parameter_names

    theirs = {k: v for k, v in source.state.items() if _encoder_modality(k) in modalities}
    fresh: set[str] = set()
    for m in modalities:
        if model.configs[m].trunk.adapter is None:
            continue
        adapter = {f"model.trunks.{m}.{n}" for n in adapter_parameter_names(model.trunks[m])}
        if any(k in theirs for k in adapter):
            continue  # a checkpoint trained with an adapter: its names are ours already
        fresh |= adapter
        for name in model.trunks[m].state_dict():
            key = f"model.trunks.{m}.{name}"
            plain = key.replace(".base_layer.", ".")
            if plain != key and key not in theirs and plain in theirs:
                theirs[key] = theirs.pop(plain)
    return theirs, fresh


def fit_problems(source: InitSource, model, modalities: list[str]) -> list[str]:
    """What keeps ``source``'s weights of ``modalities`` from loading into ``model``: one entry per problem.

    The config keys to change come first (they explain the tensors), then missing, unknown, misshapen
    and non-finite tensors. Works on the meta device (shapes only; values are not checked there).
    """
    ours = {f"model.{k}": v for k, v in model.state_dict().items() if k.split(".")[1] in modalities}
    theirs, fresh = _their_weights(source, model, modalities)
    bad = [d for m in modalities for d in _architecture_differences(source, model, m)]
    bad += [f"{k} missing from the checkpoint" for k in ours if k not in theirs and k not in fresh]
    unknown = [k for k in theirs if k not in ours]
    if any(".base_layer." in k or ".lora_" in k for k in unknown):
        bad.append(
            "the checkpoint's trunk carries adapters this config does not: give the same trunk.adapter, or merge "
            "them into its weights first (bindspace-convert merge)"
        )
    bad += [f"{k} unknown to this config" for k in unknown]
    for k, v in ours.items():
        got = theirs.get(k)
        if got is not None and (not isinstance(got, torch.Tensor) or got.shape != v.shape):
            found = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            bad.append(f"{k} is {found} there, {tuple(v.shape)} in this config")
        elif got is not None and got.is_floating_point() and not got.is_meta and not bool(torch.isfinite(got).all()):
            bad.append(f"{k} holds NaN or inf")
    return bad


def seed_from_checkpoint(source: InitSource, module) -> dict[str, list[str]]:
    """Load ``source``'s weights into a fresh :class:`~bindspace.training.module.AlignmentModule`, in place.

    Every modality of the config that the checkpoint holds is loaded whole (preprocessor, trunk, head);
    one it lacks keeps its fresh initialisation; one of the checkpoint's that the config lacks is
    ignored. An edge's temperature is loaded when the checkpoint has one for the same pair (either
    orientation) and both of its encoders were loaded; otherwise it starts at the config's ``init``.
    Nothing else is read: the optimizer, schedule, step and curriculum state start fresh.

    Returns:
        ``{"loaded": [...], "fresh": [...], "ignored": [...], "logit_scales": [...]}`` (modalities, edge keys).

    Raises:
        ConfigError: shared modalities whose weights or architecture disagree with the config (one line
            naming the keys and the file), or no modality in common.
    """
    model = module.model
    loaded = [m for m in model.modalities if m in source.modalities]
    fresh = [m for m in model.modalities if m not in source.modalities]
    ignored = [m for m in source.modalities if m not in model.modalities]
    if not loaded:
        raise ConfigError(
            f"init_from: {source.path} holds {source.modalities}, none of this config's modalities {model.modalities}"
        )
    bad = fit_problems(source, model, loaded)
    if bad:
        raise ConfigError(f"init_from: {source.path} does not fit this config: {_named(bad)}")
    theirs, _ = _their_weights(source, model, loaded)
    with torch.no_grad():
        model.load_state_dict({k.removeprefix("model."): v for k, v in theirs.items()}, strict=False)
    scales = []
    for a, b in module.loss.edges:
        if a not in loaded or b not in loaded:
            continue
        key = f"{a}|{b}"
        stored = next(
            (source.state[f"loss.logit_scales.{k}.log_scale"] for k in (key, f"{b}|{a}")
             if f"loss.logit_scales.{k}.log_scale" in source.state),
            None,
        )  # fmt: skip
        if isinstance(stored, torch.Tensor) and stored.numel() == 1 and bool(torch.isfinite(stored).all()):
            with torch.no_grad():
                module.loss.logit_scales[key].log_scale.copy_(stored.reshape(()))
            scales.append(key)
    return {"loaded": loaded, "fresh": fresh, "ignored": ignored, "logit_scales": scales}


@rank_zero_only
def log_seeding(path: str, report: Mapping[str, list[str]]) -> None:
    """One line per fact: what was loaded, what starts fresh, what was ignored (once, by global rank 0)."""
    scales = ", ".join(report["logit_scales"]) or "none (fresh, from the config)"
    log.info("init_from: %s: loaded %s (temperatures: %s); optimizer, schedule and step start fresh",
             path, ", ".join(report["loaded"]), scales)  # fmt: skip
    if report["fresh"]:
        log.info("init_from: %s not in %s: start fresh", ", ".join(report["fresh"]), path)
    if report["ignored"]:
        log.info("init_from: %s in %s but not in this config: ignored", ", ".join(report["ignored"]), path)
