"""What a modality is, declared once: its spec, its config, and the registry of specs.

A modality module (``image.py``, ``audio.py``, ...) subclasses :class:`ModalitySpec`, fills in how a
decoded file becomes model input (``transform``) and how model input becomes tokens
(``build_preprocessor``), and registers an instance with :func:`register_modality`. Everything else
(trunks, heads, losses, data loading, evaluation) reads the spec, so adding a seventh modality touches
that module and its YAML file under ``configs/modality/`` only.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bindspace.errors import ConfigError

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
    name: str | None = None  # timm architecture name for kind=timm
    pretrained: str | None = None
    freeze: bool = False  # frozen trunks get no gradients and no optimizer state
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


def _from_mapping(cls: type, data: Mapping[str, Any] | None, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and values of the wrong type by name."""
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys, got {data!r}")
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        near = difflib.get_close_matches(unknown[0], sorted(names), n=1, cutoff=0.6)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"{where}: unknown key(s) {unknown}{hint}; expected some of {sorted(names)}")
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        check_type(value, hints.get(key, Any), f"{where}.{key}")
    return cls(**data)


def check_type(value: Any, hint: Any, key: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` when ``value`` does not fit the annotation ``hint``.

    Configs come from YAML and the command line, so the rules are YAML's: an int is a valid float, a
    list is a valid tuple, ``true``/``false`` are never numbers, and a string is never a number
    (``trainer.max_steps=abc``).
    """
    if not _fits(value, hint):
        raise ConfigError(f"{key} must be {_describe(hint)}, got {value!r}")


def _fits(value: Any, hint: Any) -> bool:
    if hint is Any or hint is object:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple or hint is tuple:
        if not isinstance(value, list | tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return not args or (len(args) == len(value) and all(_fits(v, a) for v, a in zip(value, args, strict=True)))
    if origin is list or hint is list:
        return isinstance(value, list | tuple) and (not args or all(_fits(v, args[0]) for v in value))
    if origin is dict or hint is dict:
        return isinstance(value, Mapping)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # an annotation this checker does not know: let the dataclass decide


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if hint is type(None):
        return "null"
    if origin is tuple:
        return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
    if origin is list:
        return f"a list of {_describe(args[0])}" if args else "a list"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


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

    def read(self, path: str | Path) -> Any:
        """Decode one file into the raw form :meth:`transform` takes."""
        from bindspace.data.readers import read_file

        return read_file(self.name, path)

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

    def config_from_dict(self, data: Mapping[str, Any]) -> ModalityConfig:
        """Validate a plain mapping (e.g. from YAML) into a :class:`ModalityConfig`."""
        data = dict(data)
        name = data.pop("name", self.name)
        if name != self.name:
            raise ConfigError(f"modality config for {self.name!r} says name={name!r}")
        where = f"modalities.{self.name}"
        known = {"input", "trunk", "head", "logit_scale"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")
        section = {k: {**self.defaults.get(k, {}), **dict(data.get(k) or {})} for k in known}
        return ModalityConfig(
            name=self.name,
            input=_from_mapping(self.input_config, section["input"], f"{where}.input"),
            trunk=_from_mapping(TrunkConfig, section["trunk"], f"{where}.trunk"),
            head=_from_mapping(HeadConfig, section["head"], f"{where}.head"),
            logit_scale=_from_mapping(LogitScaleConfig, section["logit_scale"], f"{where}.logit_scale"),
        )

    def default_config(self) -> ModalityConfig:
        return self.config_from_dict({})


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


def register_modality(cls: type[ModalitySpec]) -> type[ModalitySpec]:
    """Class decorator: register a spec under its ``name`` (one instance per modality)."""
    if cls.name in _REGISTRY:
        raise ValueError(f"modality {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls()
    return cls


def get_modality(name: str) -> ModalitySpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown modality {name!r}; registered: {list_modalities()}") from None


def list_modalities() -> list[str]:
    """Registered modality names, in registration order (image, text, audio, depth, thermal, imu)."""
    return list(_REGISTRY)


ReaderFn = Callable[[Path], Any]
