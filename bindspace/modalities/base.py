"""What a modality is, declared once: its spec, its config, and the registry of specs.

A modality is one module: a :class:`ModalitySpec` subclass holding the input dataclass (every input
constant, written once as its defaults), the file readers by suffix, the transform from a decoded
file to model input, the tokenizer (``build_preprocessor``), the ImageBind-huge recipe for trunk,
head and temperature (``defaults``) and the smaller model presets (``presets``, timm's
``default_cfgs`` idea), registered with :func:`register_modality`. Everything else (Hydra configs,
trunks, heads, losses, data loading, evaluation, the command lines) reads the registry, so a seventh
modality is that one module, inside the package or in another one that declares it under the entry
point group ``bindspace.modalities`` (see README, "Adding a modality").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bindspace.errors import ConfigError, DataFileError
from bindspace.modalities.files import InMemoryFile
from bindspace.nn.adapters import ADAPTER_KINDS, AdapterConfig
from bindspace.utils.typed import check_type, from_mapping

ModelInput = Tensor | dict[str, Tensor]


# The parts of an encoder that hold parameters (ImageBind's four stages minus the parameter-free
# postprocessor): what freezing and the curriculum's ``freeze_parts`` name.
ENCODER_PARTS = ("preprocessor", "trunk", "head")


@dataclass
class TrunkConfig:
    """The transformer that turns tokens into contextual tokens.

    ``kind`` picks where it comes from: ``transformer`` builds timm blocks from scratch (ImageBind's
    SimpleTransformer, pre-norm blocks), ``timm`` creates a timm ViT by ``name`` (optionally
    ``pretrained`` from a hub id or a local folder saved with timm's ``save_for_hf``) and ``hf``
    loads a transformers ``AutoModel`` from ``pretrained`` (hub id or a ``save_pretrained`` folder).
    """

    kind: str = "transformer"
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    pre_norm: bool = False  # LayerNorm before the first block; ImageBind uses it for vision only
    kv_bias: bool = False  # a learned key/value pair in every attention (ImageBind's add_bias_kv: audio, depth, ...)
    norm_eps: float = 1e-6  # the blocks' LayerNorm epsilon: ImageBind's, and timm 1.0.31's Block default
    name: str | None = None  # timm architecture name for kind=timm
    pretrained: str | None = None
    freeze: bool = False  # frozen trunks get no gradients and no optimizer state
    # Train only the last N blocks and the final norm (the embeddings and earlier blocks frozen); None: all.
    unlocked_layers: int | None = None
    # A peft adapter on the trunk ({kind: lora, r: 8, alpha: 16, dropout: 0.05, target: [qkv, proj]}):
    # the trunk's own weights freeze, the adapter's train (bindspace.nn.adapters).
    adapter: dict[str, Any] | None = None
    grad_checkpointing: bool = False
    trust_remote_code: bool = False  # never run code from a model folder unless asked


@dataclass
class HeadConfig:
    """LayerNorm -> pool -> (dropout) -> Linear(width, embed_dim), as ImageBind's heads.

    ``pool`` is ``cls`` (first token), ``eos`` (last valid token, CLIP/ImageBind text) or ``mean``
    (masked mean, sentence-transformers models such as MiniLM).
    """

    pool: str = "cls"
    dropout: float = 0.0


@dataclass
class LogitScaleConfig:
    """Temperature preset for edges that end in this modality (ImageBind's postprocessor values).

    Embeddings are always returned unit-norm; the scale lives in the loss, one per edge, initialised
    from the preset of the edge's non-anchor side.
    """

    init: float = 1 / 0.07
    learnable: bool = True
    max: float = 100.0


@dataclass
class ModalityConfig:
    """Everything configurable about one modality; ``input`` is the spec's own input dataclass."""

    name: str
    input: Any
    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    logit_scale: LogitScaleConfig = field(default_factory=LogitScaleConfig)
    lr_scale: float = 1.0  # multiplies this encoder's learning rate (LanguageBind's --coef-lr)
    # Training-time augmentation (bindspace.data.augment): None (off), "default" or a mapping of its
    # keys; checked, and a preset resolved, by bindspace.config.build_run_spec.
    augment: Any = None


class ModalitySpec:
    """How one modality is read, transformed, tokenised and pooled.

    Subclasses set the class attributes and implement :meth:`transform`, :meth:`build_preprocessor`
    and :meth:`dummy_input`.
    """

    name: ClassVar[str]
    input_config: ClassVar[type]  # dataclass of the modality's input constants
    causal: ClassVar[bool] = False  # causal attention in a from-scratch trunk (text, as CLIP)
    inline: ClassVar[bool] = False  # manifests hold the value itself (text), not a file path
    # The ImageBind-huge recipe for trunk/head/logit_scale, as data (timm's default_cfgs idea);
    # a config overrides it key by key.
    defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    # Smaller sizes by model preset name (``model=tiny``): {preset: {section: {key: value}}}, applied
    # over ``defaults``; a preset this modality does not list leaves it at ``defaults``.
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {}
    # File suffix (lower case, with the dot) -> reader: path -> the raw form :meth:`transform` takes.
    readers: ClassVar[Mapping[str, Callable[[Path], Any]]] = {}
    # Model input carries a clip axis: ``(B, S, ...)``, S clips per sample (ImageBind's audio), each
    # encoded on its own and the embeddings averaged. Declared, never guessed from the shape.
    clip_axis: ClassVar[bool] = False

    @property
    def suffixes(self) -> tuple[str, ...]:
        """The file suffixes this modality reads (empty for inline modalities such as text)."""
        return tuple(self.readers)

    def read(self, path: str | Path | InMemoryFile) -> Any:
        """Decode one file (a path, or its bytes with its name) into the raw form :meth:`transform` takes.

        The reader is chosen by the suffix. Bytes are decoded in memory (tar shards: no temporary files).

        Raises:
            DataFileError: an unknown suffix, or a file that cannot be used (named, with the reason).
        """
        path = path if isinstance(path, InMemoryFile) else Path(path)
        reader = self.readers.get(path.suffix.lower())
        if reader is None:
            if not self.readers:
                raise DataFileError(path, f"{self.name} is given inline (the value itself), not read from a file")
            found = f"suffix {path.suffix!r}" if path.suffix else "no suffix"
            accepted = ", ".join(self.readers)
            raise DataFileError(path, f"{self.name} files need a known suffix, got {found}; accepted: {accepted}")
        return reader(path)

    def decode(self, name: str, data: bytes) -> Any:
        """:meth:`read` of bytes held in memory; ``name`` gives the suffix and names the file in errors."""
        return self.read(InMemoryFile(name, data))

    @property
    def renders_synthetic(self) -> bool:
        """Whether :meth:`render_synthetic` is implemented (the synthetic benchmark can hold this modality)."""
        return type(self).render_synthetic is not ModalitySpec.render_synthetic

    def render_synthetic(self, factors: Mapping[str, Any], noise: Any, cfg: Any) -> Any:
        """Optional: render scenes of the synthetic benchmark (``bindspace.data.synthetic``) in this modality.

        Args:
            factors: ``label`` (B,) int64 and the latent factors (``x``, ``y``, ``size``,
                ``orientation``, ``speed``, ``temperature``) as (B,) float32 in [0, 1).
            noise: a :class:`~bindspace.data.synthetic.SceneNoise` for this modality's noise stream
                (``uniform(k)``, ``normal(shape)``: pure functions of seed and scene id).
            cfg: this modality's input dataclass.

        Returns:
            A raw batch that :meth:`transform_batch` accepts.
        """
        raise NotImplementedError(f"the synthetic benchmark cannot render {self.name}")

    def transform(self, raw: Any, cfg: Any) -> ModelInput:
        """Raw decoded sample -> model input for one sample (no batch dimension)."""
        raise NotImplementedError

    def transform_batch(self, raws: Any, cfg: Any) -> ModelInput:
        """A batch of raw samples -> batched model input; override when it can be vectorised."""
        return collate_inputs([self.transform(r, cfg) for r in raws])

    def build_preprocessor(self, cfg: Any, width: int) -> nn.Module:
        """Model input -> ``(tokens (B, N, width), mask (B, N) bool or None)``."""
        raise NotImplementedError

    def dummy_input(self, cfg: Any, batch_size: int, generator: torch.Generator) -> ModelInput:
        """A random batch of valid model input, for tests, shape checks and benchmarks."""
        raise NotImplementedError

    def config_from_dict(self, data: Mapping[str, Any], preset: str | None = None) -> ModalityConfig:
        """Validate a plain mapping (e.g. from YAML) into a :class:`ModalityConfig`.

        Keys not given come from ``presets[preset]`` (when this modality has that preset), then from
        ``defaults``, then from the dataclasses' own defaults.
        """
        data = dict(data)
        name = data.pop("name", self.name)
        if name != self.name:
            raise ConfigError(f"modality config for {self.name!r} says name={name!r}")
        where = f"modalities.{self.name}"
        known = {"input", "trunk", "head", "logit_scale"}
        lr_scale = data.pop("lr_scale", 1.0)
        augment = data.pop("augment", None)
        unknown = sorted(set(data) - known)
        if unknown:
            expected = sorted(known | {"augment", "lr_scale"})
            raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {expected}")
        sized = self.presets.get(preset, {}) if preset else {}
        section = {k: {**self.defaults.get(k, {}), **sized.get(k, {}), **dict(data.get(k) or {})} for k in known}
        return ModalityConfig(
            name=self.name,
            input=from_mapping(self.input_config, section["input"], f"{where}.input"),
            trunk=_finetune_checked(from_mapping(TrunkConfig, section["trunk"], f"{where}.trunk"), where),
            head=from_mapping(HeadConfig, section["head"], f"{where}.head"),
            logit_scale=from_mapping(LogitScaleConfig, section["logit_scale"], f"{where}.logit_scale"),
            lr_scale=_lr_scale(lr_scale, where),
            augment=augment,
        )

    def default_config(self, preset: str | None = None) -> ModalityConfig:
        return self.config_from_dict({}, preset)

    def config_dict(self, preset: str | None = None) -> dict[str, Any]:
        """The full default config as plain data (what bindspace's Hydra configs are generated from)."""
        return config_to_dict(self.default_config(preset))


def _finetune_checked(trunk: TrunkConfig, where: str) -> TrunkConfig:
    """``trunk.unlocked_layers`` and ``trunk.adapter`` checked (their fit to the trunk's depth and layers: at build)."""
    n = trunk.unlocked_layers
    if n is not None and n < 0:
        raise ConfigError(f"{where}.trunk.unlocked_layers must be an integer >= 0 or null (all), got {n!r}")
    if n is not None and trunk.kind == "transformer" and n > trunk.depth:
        raise ConfigError(f"{where}.trunk.unlocked_layers={n} but the trunk has {trunk.depth} blocks (trunk.depth)")
    if trunk.adapter is not None:
        trunk.adapter = dataclasses.asdict(adapter_config(trunk.adapter, f"{where}.trunk.adapter"))
    if trunk.freeze and trunk.adapter is not None:
        raise ConfigError(
            f"{where}.trunk.adapter ({trunk.adapter['kind']} on {trunk.adapter['target']}) with trunk.freeze=true: "
            "the frozen trunk holds the adapter, so nothing of it would train; drop trunk.freeze "
            "(an adapter already keeps the trunk's own weights frozen)"
        )
    if trunk.freeze and n is not None:
        raise ConfigError(
            f"{where}.trunk.unlocked_layers={n} with trunk.freeze=true: a frozen trunk unlocks nothing; set one of them"
        )
    return trunk


def adapter_config(data: Mapping[str, Any], where: str) -> AdapterConfig:
    """Validate ``trunk.adapter`` (a mapping) into an :class:`~bindspace.nn.adapters.AdapterConfig`."""
    cfg = from_mapping(AdapterConfig, data, where)
    if cfg.kind not in ADAPTER_KINDS:
        raise ConfigError(f"{where}.kind must be one of {list(ADAPTER_KINDS)}, got {cfg.kind!r}")
    if cfg.r < 1:
        raise ConfigError(f"{where}.r must be an integer >= 1, got {cfg.r!r}")
    if not 0.0 < cfg.alpha < float("inf"):
        raise ConfigError(f"{where}.alpha must be > 0, got {cfg.alpha!r}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"{where}.dropout must be in [0, 1), got {cfg.dropout!r}")
    if not cfg.target or not all(isinstance(t, str) and t for t in cfg.target):
        raise ConfigError(f"{where}.target must be a non-empty list of module names, got {cfg.target!r}")
    cfg.target = list(cfg.target)
    return cfg


def _lr_scale(value: Any, where: str) -> float:
    check_type(value, float, f"{where}.lr_scale")
    if not 0.0 < float(value) < float("inf"):
        raise ConfigError(f"{where}.lr_scale must be a number > 0, got {value!r}")
    return float(value)


def config_to_dict(cfg: ModalityConfig) -> dict[str, Any]:
    """A :class:`ModalityConfig` as plain YAML-able data (tuples as lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(cfg))


def collate_inputs(items: list[ModelInput]) -> ModelInput:
    """Stack per-sample model inputs (tensors or dicts of tensors) along a new batch dimension."""
    if isinstance(items[0], dict):
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}
    return torch.stack(items)


def concat_inputs(parts: list[ModelInput]) -> ModelInput:
    """Concatenate batched model inputs along the batch dimension."""
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts)


def input_batch_size(x: ModelInput) -> int:
    return next(iter(x.values())).shape[0] if isinstance(x, dict) else x.shape[0]


_REGISTRY: dict[str, ModalitySpec] = {}
# Entry points of group ENTRY_POINT_GROUP that failed to load: name -> why (named when that modality is asked for).
PLUGIN_ERRORS: dict[str, str] = {}
ENTRY_POINT_GROUP = "bindspace.modalities"
_SECTIONS = ("input", "trunk", "head", "logit_scale")


def register_modality(cls: type[ModalitySpec]) -> type[ModalitySpec]:
    """Class decorator: check a spec's declarations and register one instance under its ``name``.

    Raises:
        TypeError: a declaration of the wrong kind (the message names the class attribute).
        ValueError: a name already registered, or one that cannot be a config key.
    """
    where = f"{cls.__module__}.{cls.__qualname__}"
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
        raise ValueError(f"{where}.name must be a lower-case identifier (a config key), got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"modality {name!r} is already registered (by {type(_REGISTRY[name]).__module__})")
    if not dataclasses.is_dataclass(getattr(cls, "input_config", None)):
        raise TypeError(f"{where}.input_config must be a dataclass of the modality's input constants")
    for suffix, reader in cls.readers.items():
        if not (isinstance(suffix, str) and suffix.startswith(".") and suffix == suffix.lower()) or not callable(
            reader
        ):
            raise TypeError(f"{where}.readers: expected lower-case '.suffix' -> function, got {suffix!r}: {reader!r}")
    if cls.inline and cls.readers:
        raise TypeError(f"{where}: an inline modality (the value itself in manifests) has no file readers")
    declared = {"defaults": cls.defaults, **{f"presets[{p!r}]": v for p, v in cls.presets.items()}}
    for what, sections in declared.items():
        unknown = sorted(set(sections) - set(_SECTIONS))
        if unknown:
            raise TypeError(f"{where}.{what}: unknown section(s) {unknown}; expected some of {list(_SECTIONS)}")
    spec = cls()
    for preset in (None, *cls.presets):  # every preset must build: a typo in one fails at import, not in a run
        try:
            spec.config_from_dict({}, preset)
        except ConfigError as err:
            raise TypeError(f"{where}: preset {preset or 'defaults'!r} does not validate: {err}") from None
    _REGISTRY[name] = spec
    return cls


def unregister_modality(name: str) -> None:
    """Remove a registered modality (tests and notebooks that define one for a while)."""
    _REGISTRY.pop(name, None)


def get_modality(name: str) -> ModalitySpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(unknown_modality(name)) from None


def unknown_modality(name: Any) -> str:
    """``unknown modality 'txt' (did you mean 'text'?); registered: [...]``, and why a plugin of that name failed."""
    import difflib

    near = difflib.get_close_matches(str(name), list(_REGISTRY), n=1, cutoff=0.6)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    failed = f"; plugin {name!r} failed to load: {PLUGIN_ERRORS[name]}" if name in PLUGIN_ERRORS else ""
    return f"unknown modality {name!r}{hint}; registered: {list_modalities()}{failed}"


def list_modalities() -> list[str]:
    """Registered modality names, built-ins first in ImageBind's order, then plugins in load order."""
    return list(_REGISTRY)


def load_plugins() -> None:
    """Import the modules named by the ``bindspace.modalities`` entry points (once per process).

    A plugin that fails to import is reported by a warning and named again when its modality is asked
    for; the built-ins and the other plugins stay usable.
    """
    import warnings
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        try:
            ep.load()
        except Exception as err:  # a broken plugin must not take the built-ins down with it
            PLUGIN_ERRORS[ep.name] = f"{ep.value}: {type(err).__name__}: {err}"
            warnings.warn(f"bindspace: modality plugin {ep.name!r} ({ep.value}) failed to load: {err}", stacklevel=2)
            continue
        if ep.name not in _REGISTRY:
            PLUGIN_ERRORS[ep.name] = f"{ep.value} imported, but registered no modality named {ep.name!r}"


# The names scripts written against earlier releases import from here (now in bindspace.utils.typed).
_from_mapping = from_mapping
