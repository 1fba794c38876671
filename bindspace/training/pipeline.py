"""bindspace-train's pipeline: a composed config checked, the model, data and Trainer built, trained,
evaluated on held-out data, written to the run folder.

:func:`run` is the one entry (``bindspace-train``'s Hydra job and :func:`bindspace.training.fit.fit` call
it); the command line itself, with its checks before this module and Lightning are imported, is
:mod:`bindspace.train`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from bindspace.config import (
    RunSpec,
    build_run_spec,
    check_train_config,
    parse_early_stopping,
    register_resolvers,
    reliability_settings,
)
from bindspace.data import build_datamodule, data_modalities
from bindspace.data.checks import report_caption_truncation
from bindspace.data.synthetic import scene_settings
from bindspace.errors import ConfigError
from bindspace.evaluation.stats import write_per_query
from bindspace.evaluation.suite import versioned
from bindspace.evaluation.tables import format_metrics_report
from bindspace.evaluation.zero_shot import load_prompts
from bindspace.graph import edge_key
from bindspace.modalities import get_modality
from bindspace.training.bind import BindPlan, add_passengers, bind_new_modality, resumed_plan_inputs
from bindspace.training.callbacks import CurriculumCallback, StepCost
from bindspace.training.checkpoints import (
    InitSource,
    RunCheckpoint,
    log_seeding,
    read_init_source,
    seed_from_checkpoint,
)
from bindspace.training.distributed import strategy_for, trainer_world_size
from bindspace.training.early_stopping import EarlyStopping
from bindspace.training.feature_cache import FrozenFeatureCache
from bindspace.training.loggers import build_logger, close_logger, log_forgetting, log_stage, remember_wandb_run
from bindspace.training.module import AlignmentModule
from bindspace.training.optim import resume_conflicts
from bindspace.training.reliability import (
    AtomicCheckpointIO,
    NonFiniteGuard,
    Preemption,
)
from bindspace.utils.environment import describe_environment
from bindspace.utils.io import atomic_write_json, atomic_write_text
from bindspace.utils.run_folder import RunFolder

log = logging.getLogger("bindspace.train")
register_resolvers()  # ${pkg_dir:...} in a config mapping given to run() directly


def build_trainer(
    cfg: Mapping[str, Any], run_dir: Path, logger, curriculum: CurriculumCallback, rel: dict[str, Any], strategy: Any
) -> L.Trainer:
    """The Trainer of ``cfg.trainer`` with bindspace's callbacks.

    ``rel``: :func:`reliability_settings`; ``strategy``: ``trainer.strategy`` as :func:`strategy_for` adjusted it.
    """
    from lightning.pytorch.callbacks import LearningRateMonitor

    ckpt = RunCheckpoint(run_dir / "checkpoints", cfg["checkpoint"]["every_n_train_steps"])
    preemption = Preemption(ckpt.last_path, rel["signals"], rel["requeue"], save=ckpt.save_step)
    callbacks = [ckpt, curriculum, NonFiniteGuard(rel["max_consecutive"]), preemption, StepCost()]
    early = parse_early_stopping(cfg.get("early_stopping"), cfg["trainer"])
    if early is not None:  # counts in the curriculum's last stage only, once a step of it has trained
        callbacks.append(EarlyStopping(run_dir / "checkpoints", **early, counting=curriculum.in_last_stage))
    bar = step_progress_bar() if cfg["trainer"].get("enable_progress_bar", True) else None
    if bar is not None:
        callbacks.append(bar)
    if logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    one_console_for_lightning()
    # Lightning 2.6 advertises its cloud logger at every Trainer start ("Tip: ... litlogger"): not shown.
    lightning_info = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    lightning_info.addFilter(_no_tips)
    try:
        return hydra.utils.instantiate(
            dict(cfg["trainer"]),
            strategy=strategy,
            logger=logger or False,
            callbacks=callbacks,
            plugins=[AtomicCheckpointIO()],
            default_root_dir=str(run_dir),
        )
    finally:
        lightning_info.removeFilter(_no_tips)


def one_console_for_lightning() -> None:
    """Lightning's lines on the console once, and in the run's log.

    Lightning gives its package loggers console handlers of their own: ``lightning`` always ("INFO: GPU
    available: ..."), ``lightning.pytorch`` and ``lightning.fabric`` when the root logger had no handler at
    their import (those stop propagating). Under bindspace's CLIs the root logger has the console (Hydra's) and
    ``<job>.log``: every Lightning line was printed twice, or, imported early, printed without reaching the log.
    With handlers on the root logger, Lightning's own console handlers go and its records propagate to them.
    A notebook or script that configured no logging keeps Lightning's handlers.
    """
    if not logging.getLogger().handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning"):
        logger = logging.getLogger(name)
        own = [h for h in logger.handlers if type(h) is logging.StreamHandler]  # not a FileHandler someone added
        for handler in own:
            logger.removeHandler(handler)
        if own:
            logger.propagate = True


def _no_tips(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip:")


def step_progress_bar():
    """Lightning's rich progress bar labelled by steps: bindspace trains for ``max_steps`` in one long epoch
    (``max_epochs=-1``), which the stock label shows as ``Epoch 0/-2``. None without ``rich``."""
    try:
        import rich  # noqa: F401
        from lightning.pytorch.callbacks import RichProgressBar
    except ImportError:
        return None

    class StepProgressBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            return f"step (of max_steps={self.trainer.max_steps})"

        @property
        def total_train_batches(self) -> int | float:
            # One epoch holds the whole run (the step loader is endless), so the count is the epoch's batch
            # index, which a resume continues (step 13 of 14): the total is max_steps, not Lightning's
            # remaining steps (a resumed bar read "14/2").
            trainer = self.trainer
            steps = trainer.max_steps if trainer.max_epochs == -1 and trainer.max_steps is not None else -1
            if steps > 0 and trainer.num_training_batches >= steps - trainer.global_step:
                return steps
            return super().total_train_batches

    return StepProgressBar()


def build_feature_cache(cfg: Mapping[str, Any], spec: RunSpec) -> FrozenFeatureCache | None:
    """``cache.frozen_features``: serve frozen encoders' features from a per-sample cache."""
    ccfg = cfg.get("cache") or {}
    if not ccfg.get("frozen_features", False):
        return None
    bad = [m for m, c in spec.modalities.items() if c.head.pool not in ("cls", "eos")]
    frozen_any = any(c.trunk.freeze for c in spec.modalities.values()) or any(
        spec.curriculum.frozen(i) for i in range(len(spec.curriculum.stages))
    )
    if not frozen_any:
        raise ConfigError(
            "cache.frozen_features=true but no encoder is ever frozen (set modalities.<m>.trunk.freeze=true "
            "or a curriculum that freezes, e.g. curriculum=progressive_frozen)"
        )
    if bad:
        log.warning("cache.frozen_features: %s pool with 'mean' and are never cached", ", ".join(bad))
    # Frozen some other way than the checks refuse (trunk.unlocked_layers=0 freezes a trunk without a final
    # norm wholly): an input that varies per visit is still never served a feature cached from another visit.
    sampled = (cfg.get("data") or {}).get("captions") == "sample"
    uncached = [m for m, c in spec.modalities.items() if c.augment or (sampled and get_modality(m).inline)]
    return FrozenFeatureCache(ccfg.get("dir"), uncached=uncached)


def apply_speed_options(model, cfg: Mapping[str, Any]) -> None:
    """``speed.compile`` (torch.compile per trunk) and ``speed.channels_last`` (NHWC conv stems)."""
    speed = cfg.get("speed") or {}
    names = list(speed.get("compile") or [])  # checked by bindspace.config.check_speed
    if names == ["all"]:
        names = model.modalities
    for m in names:
        # In place (nn.Module.compile): parameter names, checkpoints and freezing are unchanged.
        model.trunks[m].compile(
            mode=speed.get("compile_mode") or None, backend=speed.get("compile_backend", "inductor")
        )
    if speed.get("channels_last", False):
        model.to(memory_format=torch.channels_last)  # 4-D conv weights; convs convert their inputs


def resume_checkpoint(cfg: Mapping[str, Any], run_dir: Path) -> str | None:
    """``ckpt_path`` if given; else, with ``resume: auto``, the run folder's own ``last.ckpt`` if present.

    This is what makes a requeued SLURM job (or any relaunch with the same ``hydra.run.dir``) continue
    where the preempted one stopped.
    """
    if cfg.get("ckpt_path"):
        if not Path(cfg["ckpt_path"]).is_file():
            raise ConfigError(f"ckpt_path: no checkpoint file at {cfg['ckpt_path']}")
        return str(cfg["ckpt_path"])
    last = run_dir / "checkpoints" / "last.ckpt"
    if cfg.get("resume", "auto") == "auto" and last.is_file():
        return str(last)  # announced by announce_resume once the run folder is locked
    return None


def announce_resume(cfg: Mapping[str, Any], ckpt_path: str | None) -> None:
    """One line when a run continues a checkpoint (a reused run folder would otherwise continue silently).

    Called once the run folder is locked, so a launch the lock refuses (the folder's run is still live)
    prints only that refusal, not a resume it will never do.
    """
    if ckpt_path is None:
        return
    if not cfg.get("ckpt_path"):
        rank_zero_info(
            f"bindspace-train: resuming from {ckpt_path} (resume=auto; resume=never starts this run folder over)"
        )
    if cfg.get("init_from"):
        rank_zero_info(
            f"bindspace-train: init_from={cfg['init_from']} not read: resuming from {ckpt_path} (it seeds fresh runs)"
        )


def seed_source(plain: dict[str, Any], ckpt_path: str | None) -> tuple[InitSource | None, BindPlan | None]:
    """``init_from``, read, for a fresh run (None without it or when the run resumes: its own checkpoint wins).

    With ``new_modality`` the graph and curriculum are rewritten here (:func:`bind_new_modality`), from the
    checkpoint's modalities, or from the run's own checkpoint when it resumes.
    """
    path, new = plain.get("init_from"), plain.get("new_modality")
    if not path:
        return None, None
    init = read_init_source(path) if ckpt_path is None else None  # a resume says so: announce_resume
    if not new:
        return init, None
    if init is not None:
        held, trained = init.modalities, [tuple(e) for e in (init.meta or {}).get("edges") or []]
    else:
        held, trained = resumed_plan_inputs(ckpt_path)
    return init, bind_new_modality(plain, held, trained, path)


def warn_unreached_stages(spec: RunSpec, max_steps: int, steps_per_epoch: int) -> list[str]:
    """One warning line when ``trainer.max_steps`` will end the run before the curriculum's last stage.

    Returns the stages warned about (plateau stages make the rest unpredictable: checked at the end).
    """
    missing = spec.curriculum.unreached(max_steps, steps_per_epoch)
    if missing:
        stages = spec.curriculum.stages
        edges = [edge_key(e) for s in stages if s.name in missing for e in s.new_edges]
        first = next(i for i, s in enumerate(stages) if s.name in missing)
        plateaus = [s.name for s in stages[:first] if s.plateau is not None]
        # Stages after a plateau stage are planned at its cap: reached earlier, it lets them start.
        when = f" if plateau stage(s) {', '.join(plateaus)} run to their max_steps" if plateaus else ""
        result = (
            "would then not be trained (what ran is checked at the end of the run)"
            if plateaus
            else "will not be trained"
        )
        log.warning(
            "curriculum: trainer.max_steps=%d ends the run before stage(s) %s%s; edges %s %s",
            max_steps, ", ".join(missing), when, ", ".join(edges), result,
        )  # fmt: skip
    return missing


def final_metrics(
    module: AlignmentModule,
    datamodule,
    spec: RunSpec,
    trainer: L.Trainer,
    curriculum: CurriculumCallback,
    wall: float,
    prompts: dict | None = None,
    evaluate: bool = True,
) -> dict:
    """Retrieval on the held-out test gallery, in the ``metrics.json`` layout.

    With ``evaluate=False`` (``eval.final=false``: sweeps that only need training curves, tests) the
    retrieval, zero-shot and gap keys are left out and the held-out set is not embedded.
    """
    evaluated: dict[str, Any] = {}
    trained = curriculum.trained_edges()
    if evaluate:  # the evaluation suite, as bindspace-eval and the stage ends run it
        by_key = {edge_key(e): e for e in spec.edges}
        evaluated = module.evaluate(
            list(datamodule.test_dataloader()),
            trained_edges=[*module.inherited_edges, *(by_key[k] for k in trained)],
            class_names=list(datamodule.class_names) or None,
            prompts=load_prompts(prompts) if prompts is not None else None,
            gap=True,
        )  # per-query values stay in module.last_per_query for per_query.npz
    return {
        **evaluated,
        "anchor": spec.anchors,
        "edges": [list(e) for e in spec.edges],
        "logit_scales": module.logit_scale_values(),
        "logit_biases": module.logit_bias_values(),  # SigLIP edges only
        "trained_edges": trained,  # took part in at least one optimisation step
        **({"inherited_edges": [edge_key(e) for e in module.inherited_edges]} if module.inherited_edges else {}),
        "stages": [{k: v for k, v in r.items() if k != "index"} for r in curriculum.state.history],
        "stages_not_reached": curriculum.stages_not_reached(),
        "validation": curriculum.state.validation,
        "budget": run_budget(spec, curriculum, trainer),
        "trainable_params": trainable_params(module),
        "steps": int(trainer.global_step),
        "world_size": int(trainer.world_size),
        "wall_seconds": round(wall, 1),
        "environment": describe_environment(),
        # A relaunched run: the launches before this one, each with the step it trained up to.
        **({"earlier_environments": module.earlier_environments} if module.earlier_environments else {}),
    }


def trainable_params(module: AlignmentModule) -> dict[str, Any]:
    """How many parameters trained, as the run ended (under a curriculum: its last stage's freezing).

    ``total`` counts every trainable parameter once (encoders and the edges' temperatures); per modality,
    ``encoder`` is the whole encoder (preprocessor, trunk, head) and ``trunk`` its trunk alone (with an
    adapter: the adapter's weights; with ``unlocked_layers``: the unlocked blocks and final norm).
    """
    return {
        "total": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "modalities": module.model.trainable_parameter_counts(),
    }


def run_budget(spec: RunSpec, curriculum: CurriculumCallback, trainer: L.Trainer) -> dict[str, Any]:
    """What a run spent, so that arms of a comparison can be checked for a matched budget."""
    edge_steps = {k: curriculum.state.edge_steps.get(k, 0) for k in (edge_key(e) for e in spec.edges)}
    starts = [r.get("start_step", 0) for r in curriculum.state.history]
    per_step = int(trainer.accumulate_grad_batches)
    return {
        "steps": int(trainer.global_step),
        "edge_steps": edge_steps,  # optimisation steps each edge took part in
        "pair_batches": sum(edge_steps.values()) * per_step,  # batches_per_step batches of pairs per edge per step
        "global_batch": int(trainer.datamodule.batch_size * trainer.world_size),
        "batches_per_step": per_step,  # trainer.accumulate_grad_batches
        "schedule": spec.curriculum.schedule,
        "stage_steps": [r["step"] - s for r, s in zip(curriculum.state.history, starts)],
    }


def run_identity(cfg: Mapping[str, Any], spec: RunSpec) -> dict[str, Any]:
    """What distinguishes this run in a sweep: written to metrics.json and used as wandb tags."""
    cur = cfg.get("curriculum") or {}
    order = cur.get("order")
    return {
        "group": (cfg.get("logger") or {}).get("group") or cfg.get("task_name"),
        "anchor": "+".join(spec.anchors) if spec.anchors else "edges",
        "curriculum": cur.get("name", "custom"),
        "order": ">".join("+".join(g) if isinstance(g, list) else g for g in order)
        if order
        else cur.get("name", "custom"),
        "seed": cfg.get("seed"),
    }


def checkpoint_step(path: str) -> int:
    """The global step a checkpoint resumes at (memory-mapped: its tensors are not read)."""
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step", 0))


def check_checkpoint_fits(path: str, module: AlignmentModule) -> None:
    """Open a checkpoint to resume from and check it against the model and optimizer, before any data is decoded.

    ``weights_only``: a file carrying code is refused; a truncated or foreign file, or one of another
    model (size, modalities, trunk kinds), stops with one line naming the file and the first difference;
    so does an optimizer setting the resume would silently replace by the checkpoint's
    (:func:`check_optimizer_unchanged`).
    """
    from bindspace.inference import load_checkpoint

    ckpt = load_checkpoint(path, key="ckpt_path")
    state = ckpt["state_dict"]
    expected = {k: v for k, v in module.state_dict().items() if k.startswith(("model.", "loss."))}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k.startswith(("model.", "loss.")) and k not in expected]
    if missing or unexpected:
        raise ConfigError(
            f"{path}: a checkpoint of another model: {len(missing)} weights of this config missing "
            f"(e.g. {missing[:2]}), {len(unexpected)} unknown to it (e.g. {unexpected[:2]}); "
            "resume it with the config it was trained with"
        )
    for k, v in expected.items():
        got = state[k]
        if not isinstance(got, torch.Tensor) or got.shape != v.shape:
            found = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise ConfigError(
                f"{path}: a checkpoint of another model size: {k} is {found} there, {tuple(v.shape)} in this "
                "config; resume it with the config it was trained with"
            )
    check_optimizer_unchanged(path, ckpt, module)
    check_training_data_unchanged(path, ckpt, module.training_data)


def check_training_data_unchanged(path: str, ckpt: Mapping[str, Any], settings: Mapping[str, Any] | None) -> None:
    """Refuse a resume that would draw other data than the checkpoint trained on: the settings that decide a
    synthetic run's scenes (``seed``, ``data.synthetic.version``, ``data.scene.*``), recorded in every
    checkpoint since 2026-12-04 (``checkpoint["bindspace"]["training_data"]``). A checkpoint without the record
    cannot tell: a warning says what synthetic runs of that time rendered (version 1, the default then) when this
    launch renders another."""
    if settings is None:
        return
    meta = ckpt.get("bindspace")
    recorded = meta.get("training_data") if isinstance(meta, Mapping) else None
    if recorded is None:
        from bindspace.utils.config_migration import UNVERSIONED_RENDERER as then

        version = settings["data.synthetic.version"]
        if version != then:
            log.warning(
                "%s records no training data settings (written before 2026-12-04): synthetic runs of that time "
                "rendered data.synthetic.version=%s unless told otherwise, this launch renders %s; if the run "
                "trained on version %s, relaunch with data.synthetic.version=%s to continue it on the same scenes",
                path,
                then,
                version,
                then,
                then,
            )
        return
    if not isinstance(recorded, Mapping) or not all(
        isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in recorded.values()
    ):
        raise ConfigError(f"{path}: checkpoint['bindspace']['training_data'] is not a mapping of numbers and strings")
    changed = [(k, recorded[k], v) for k, v in settings.items() if k in recorded and recorded[k] != v]
    if not changed:
        return
    found = "; ".join(f"{k} is {theirs} in the checkpoint, {ours} in this config" for k, theirs, ours in changed)
    keep = " ".join(f"{k}={theirs}" for k, theirs, _ in changed)
    raise ConfigError(
        f"{path}: {found}: resuming would train the rest of the run on other scenes; relaunch with {keep} to "
        f"continue this run, or start a new run folder (another hydra.run.dir) with init_from={path} to train its "
        "weights on the new data"
    )


def check_optimizer_unchanged(path: str, ckpt: Mapping[str, Any], module: AlignmentModule) -> None:
    """Refuse a resume whose ``optim.lr`` (weight decay, betas, eps, layer decay, an encoder's ``lr_scale``)
    differs from the checkpoint's: Lightning restores the checkpoint's optimizer, so the new value would be
    ignored while the log shows it (:func:`~bindspace.training.optim.resume_conflicts`). The schedule's shape
    (``optim.warmup_steps``, ``optim.min_lr_ratio``, ``trainer.max_steps``) is this launch's and may change.
    """
    changed = resume_conflicts(ckpt, module.model, module.optim_cfg)
    if not changed:
        return
    found = "; ".join(
        f"{k} is {_shown(theirs)} in the checkpoint, {_shown(ours)} in this config" for k, theirs, ours in changed
    )
    keep = " ".join(f"{k}={_shown(theirs)}" for k, theirs, _ in changed)
    values = "values" if len(changed) > 1 else "value"
    raise ConfigError(
        f"{path}: {found}: resuming restores the checkpoint's optimizer, so the new {values} would be ignored; "
        f"relaunch with {keep} to continue this run, or start a new run folder (another hydra.run.dir) with "
        f"init_from={path} to train its weights on with the new value (a fresh optimizer, from step 0)"
    )


def _shown(value: Any) -> str:
    """A value as it is written on the command line (``0.0005``, ``[0.9,0.95]``)."""
    if isinstance(value, tuple | list):
        return "[" + ",".join(map(_shown, value)) + "]"
    if not isinstance(value, float):
        return str(value)
    text = f"{value:.6g}"
    return text if any(c in text for c in ".en") else f"{text}.0"  # 1.0, not 1: the command line reads a float


def plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A resolved, plain-data copy of a config (a Hydra ``DictConfig`` or nested dicts and lists).

    Interpolations (``${...}``) are resolved; a plain mapping without any is only copied.
    """
    if isinstance(config, DictConfig):
        return OmegaConf.to_container(config, resolve=True)
    if not isinstance(config, Mapping):
        raise ConfigError(f"a run config must be a mapping, got {type(config).__name__}")
    copied = copy.deepcopy(dict(config))
    if "${" in json.dumps(copied, default=str):
        return OmegaConf.to_container(OmegaConf.create(copied), resolve=True)
    return copied


def run(config: Mapping[str, Any]) -> dict[str, Any]:
    """Train and evaluate one configuration; returns the metrics written to ``metrics.json``.

    ``config``: the composed ``train`` config, as Hydra's ``DictConfig`` or as plain nested dicts
    (:func:`bindspace.training.fit` passes plain data). It is checked whole before any compute.
    """
    plain = plain_config(config)
    check_train_config(plain)  # every config error surfaces here or in build_run_spec, before any compute
    one_console_for_lightning()  # before the first rank_zero_info (a resume's announcement), not at the trainer
    describe_environment()  # read at launch: the commit of the code that runs, not of a checkout made during it
    given = plain["graph"].get("modalities") is not None
    if not given:  # the graph follows the data: a manifest's columns, ...
        plain["graph"]["modalities"] = data_modalities(plain["data"])
    run_dir = Path(plain["paths"]["output_dir"])
    ckpt_path = resume_checkpoint(plain, run_dir)
    init, bind = seed_source(plain, ckpt_path)
    spec = build_run_spec(plain)
    if bind is not None:
        add_passengers(spec, plain, bind)
    rel = reliability_settings(plain)
    strategy = strategy_for(
        plain["trainer"].get("strategy", "auto"), trainer_world_size(plain["trainer"]), spec.curriculum
    )
    with RunFolder(run_dir) as folder:  # locked for this run; a failure before training leaves nothing
        folder.record(config)  # as composed (interpolations kept), as Hydra records it; starts the run's log
        announce_resume(plain, ckpt_path)  # on the console once and in the log (one_console_for_lightning above)
        # Quiet: Lightning prints "Seed set to" on stderr, where a config error found while building the model
        # must be the only line; the run log records the seed instead.
        L.seed_everything(plain["seed"], workers=True, verbose=False)
        log.info("seed %d (global RNGs and dataloader workers)", plain["seed"])
        # An installed plugin modality joins a graph that follows the data: say where the graph came from.
        origin = "graph.modalities" if given else f"what data={plain['data'].get('name')} provides"
        log.info("graph: %s (%s); edges %s", ", ".join(spec.modalities), origin, ", ".join(map(edge_key, spec.edges)))
        torch.set_float32_matmul_precision("high")
        max_steps = int(plain["trainer"]["max_steps"])
        # The model before the data (building the data touches no global RNG, so initial weights are the
        # same either way): a checkpoint that does not fit stops before minutes of decoding.
        module = AlignmentModule(
            spec.build_model(),
            spec.build_loss(),
            spec.edges,
            spec.optim,
            total_steps=max_steps,
            seed=plain["seed"],
            feature_cache=build_feature_cache(plain, spec),
        )
        module.inherited_edges = bind.inherited if bind is not None else []
        module.training_data = scene_settings(plain)
        if init is not None:  # after the fresh initialisation: modalities the checkpoint lacks keep it
            log_seeding(init.path, seed_from_checkpoint(init, module))
        if ckpt_path is not None:
            check_checkpoint_fits(ckpt_path, module)
        apply_speed_options(module.model, plain)
        datamodule = build_datamodule(plain["data"], spec.modalities, spec.edges, seed=plain["seed"])
        report_caption_truncation(datamodule, spec.modalities)  # a warning line when over 1% of captions are cut
        check_selection_apart(plain, datamodule, spec.curriculum)
        return train_and_evaluate(plain, spec, module, datamodule, run_dir, rel, strategy, ckpt_path, folder)


def _heldout_keys(dataset) -> set[str] | None:
    """The source keys (a manifest's id, or ``group:<name>``; a row number qualified by its manifest) of a
    held-out set; None when it lists no samples."""
    from bindspace.data.manifest import sample_keys

    samples = getattr(dataset, "samples", None)
    return None if samples is None else {sample_keys(s)[0] for s in samples}


def check_selection_apart(plain: Mapping[str, Any], datamodule, curriculum: Any = None) -> None:
    """Refuse to select on the samples the final evaluation scores.

    Early stopping picks ``best.ckpt`` on the validation set, and a ``plateau`` stage of the curriculum ends
    when a validation metric stops improving; ``metrics.json`` scores the test set. A manifest without
    ``data.test`` (or spoken digits without ``data.select_fraction``) scores the validation set itself, so
    the choice would be fitted on the scored samples. Checked by sample (source key).
    """
    selects = []
    if parse_early_stopping(plain.get("early_stopping"), plain["trainer"]) is not None:
        selects.append("early_stopping selects the checkpoint on the validation set")
    for i, stage in enumerate(getattr(curriculum, "stages", ()) or ()):
        if stage.plateau is not None:
            selects.append(f"curriculum.stages[{i}] ({stage.name}) ends on a plateau of {stage.plateau.metric}")
    if not selects or not bool((plain.get("eval") or {}).get("final", True)):
        return  # nothing selects, or nothing is scored
    val, test = datamodule.heldout_set("val"), datamodule.heldout_set("test")
    keys = (_heldout_keys(val), _heldout_keys(test))
    shared = len(keys[0] or ()) if test is val else len(keys[0] & keys[1]) if None not in keys else 0
    if test is val or shared:
        raise ConfigError(
            f"{selects[0]}, and the final evaluation scores the same samples ({shared or 'all'} shared: the test "
            "set is the validation set or overlaps it); give a disjoint data.test, or data.val with "
            "data.select_fraction=0.5 (validation on one part, scored on the rest)"
        )


def _eval_mode_by_design(module: AlignmentModule) -> dict[str, str] | None:
    """What ``train(True)`` leaves in eval mode, per modality, if all of it is frozen by design; else None.

    ``BindSpaceModel.train`` keeps frozen parts in eval mode (no dropout or stochastic depth in what does
    not train) and frozen batch norms too (their statistics are frozen). A module in eval mode outside
    those (a user's encoder that switched itself off) is not by design: None.
    """
    was = module.training
    module.train(True)
    in_eval = {id(m) for m in module.modules() if not m.training}
    module.train(was)
    model, found, covered = module.model, {}, set()
    for m in model.modalities:
        parts = model.frozen_parts(m)
        ids = {id(x) for part in parts for x in model.encoder_parts(m)[part].modules()}
        norms = {id(x) for x in model.frozen_batch_norms(m)} - ids
        if ids or norms:
            found[m] = "/".join(parts) if parts else "frozen batch norms"
        covered |= ids | norms
    return found if in_eval and in_eval <= covered else None


def warn_accumulation(k: int, global_batch: int) -> None:
    """Gradient accumulation is not a larger contrastive batch: say so once, at start-up."""
    log.warning(
        "trainer.accumulate_grad_batches=%d sums the gradients of %d batches, but each batch's contrastive loss "
        "sees only its own %d pairs per edge (the global batch) as negatives, not %d: more negatives need a larger "
        "data.batch_size or more devices (gathered across ranks), not accumulation (docs/scaling.md)",
        k, k, global_batch, k * global_batch,
    )  # fmt: skip


@contextlib.contextmanager
def _fit_notes(module: AlignmentModule):
    """Around ``trainer.fit``: Lightning's "Found N module(s) in eval mode" warning becomes one line naming
    the frozen parts when every such module is frozen by design; otherwise Lightning's warning stands.
    A deprecation inside Lightning's own loader code is not shown."""
    by_design = _eval_mode_by_design(module)
    with warnings.catch_warnings():
        # Lightning's CombinedLoader (2.6.6) builds a torch pytree LeafSpec, which torch 2.14 deprecates: the
        # same line in every run, about Lightning's code, nothing a user can act on.
        warnings.filterwarnings(
            "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", module=r"lightning\.pytorch\."
        )
        # ModelCheckpoint's "Checkpoint directory ... exists and is not empty" at every relaunch: the folder is the
        # run's own (RunFolder), a relaunch resumes from it and says so, resume=never starts it over.
        warnings.filterwarnings(
            "ignore", message=r"Checkpoint directory .* exists and is not empty", module=r"lightning\.pytorch\."
        )
        if by_design:
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
            parts = ", ".join(f"{m} ({what})" for m, what in by_design.items())
            rank_zero_info(
                f"frozen parts stay in eval mode while training (no dropout, batch-norm statistics kept): {parts}"
            )
        yield


def train_and_evaluate(
    plain: dict[str, Any],
    spec: RunSpec,
    module: AlignmentModule,
    datamodule,
    run_dir: Path,
    rel: dict[str, Any],
    strategy: Any,
    ckpt_path: str | None,
    folder: RunFolder,
) -> dict[str, Any]:
    """The part of :func:`run` after every input was checked: fit, then the held-out evaluation."""
    max_steps = int(plain["trainer"]["max_steps"])
    identity = run_identity(plain, spec)
    resume_step = checkpoint_step(ckpt_path) if ckpt_path is not None else None
    logger = build_logger(plain, run_dir, [f"{k}={v}" for k, v in identity.items() if k != "group"], resume_step)
    try:
        accumulate = int(plain["trainer"].get("accumulate_grad_batches") or 1)
        world = trainer_world_size(plain["trainer"])
        if accumulate > 1:
            warn_accumulation(accumulate, datamodule.batch_size * world)
        steps_per_epoch = datamodule.steps_per_epoch(world, accumulate)
        spec.curriculum.check_schedule(max_steps, spec.optim.warmup_steps, steps_per_epoch)  # epoch-long stages
        predicted = warn_unreached_stages(spec, max_steps, steps_per_epoch)
        curriculum = CurriculumCallback(spec.curriculum, steps_per_epoch, stage_hook=log_stage(logger))
        trainer = build_trainer(plain, run_dir, logger, curriculum, rel, strategy)
        if logger is not None:
            logger.log_hyperparams(plain)
        folder.started()
        if trainer.is_global_zero:
            remember_wandb_run(logger, run_dir)
        start = time.perf_counter()
        # weights_only: resuming never unpickles code, only tensors and plain containers.
        with _fit_notes(module):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        wall = time.perf_counter() - start
        preempted = next((c.preempted for c in trainer.callbacks if isinstance(c, Preemption)), None)
        if preempted is not None:
            raise preempted  # checkpoint saved; no evaluation of a half-trained model
        early = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
        if early is not None and early.restore_best(module):
            log.info("early_stopping: evaluating the best weights, step %d (%s)", early.best_step, early.best_path)
        evaluate = bool((plain.get("eval") or {}).get("final", True))
        metrics = final_metrics(module, datamodule, spec, trainer, curriculum, wall, plain.get("prompts"), evaluate)
        metrics = versioned({**metrics, "run": identity})  # as written to metrics.json
        unreached = [s for s in metrics["stages_not_reached"] if s not in predicted]
        if unreached:
            log.warning("curriculum: the run ended before stage(s) %s", ", ".join(unreached))
        if early is not None:
            metrics["early_stopping"] = early.summary()
        cost = next((c for c in trainer.callbacks if isinstance(c, StepCost)), None)
        if cost is not None:
            metrics["step_cost"] = cost.summary(module.device)
        if datamodule.data_report:
            metrics["data"] = datamodule.data_report  # e.g. how many bad files on_error=skip dropped
        if trainer.is_global_zero:
            write_results(run_dir, metrics, spec, module.last_per_query)
            if logger is not None:
                summary = metrics.get("summary", {})
                logger.log_metrics({f"test/{k}": v for k, v in summary.items()}, step=trainer.global_step)
                log_forgetting(logger, metrics)
        return metrics
    finally:
        close_logger(logger)


def write_results(run_dir: Path, metrics: dict, spec: RunSpec, per_query: dict | None = None) -> None:
    """per_query.npz (when given), retrieval.txt (every matrix with chance), then metrics.json.

    ``metrics.json`` last: it is what says a run finished (``bindspace-report`` counts a job without it
    as failed and reads ``per_query.npz`` beside it), so a run killed while writing its results never
    shows a ``metrics.json`` without the files that go with it; the relaunch writes them all.
    """
    if "retrieval" not in metrics:  # eval.final=false
        atomic_write_json(run_dir / "metrics.json", metrics)
        print(
            f"trained {metrics['steps']} steps (eval.final=false: no held-out evaluation); {run_dir / 'metrics.json'}"
        )
        return
    report = format_metrics_report(metrics, list(spec.modalities))  # every matrix with chance, the summary
    if per_query:
        write_per_query(run_dir / "per_query.npz", per_query)
    atomic_write_text(run_dir / "retrieval.txt", report + "\n")
    atomic_write_json(run_dir / "metrics.json", metrics)
    trained = ", ".join(metrics["trained_edges"]) or "none"
    never = [edge_key(e) for e in spec.edges if edge_key(e) not in metrics["trained_edges"]]
    note = f"; never trained: {', '.join(never)}" if never else ""
    print(f"\nHeld-out retrieval, gallery of {metrics['gallery_size']} (trained edges: {trained}{note})\n")
    print(report)
    print(f"metrics: {run_dir / 'metrics.json'}  checkpoints: {run_dir / 'checkpoints'}")
