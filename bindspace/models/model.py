"""The multimodal model: one encoder per modality, ImageBind's four stages in four ModuleDicts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from bindspace.errors import ConfigError
from bindspace.modalities import ENCODER_PARTS, ModalityConfig, ModelInput, get_modality
from bindspace.nn.adapters import (
    AdapterConfig,
    adapter_parameter_names,
    apply_adapter,
    trunk_layout,
    trunk_trainable,
)
from bindspace.nn.layers import Head, Normalize
from bindspace.nn.pretrained import build_hf_trunk, build_timm_trunk, trunk_architecture
from bindspace.nn.transformer import TransformerTrunk

STAGES = ("preprocessors", "trunks", "heads", "postprocessors")


def build_encoder_parts(
    cfg: ModalityConfig, embed_dim: int, architecture: Mapping[str, Any] | None = None
) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    """Build (preprocessor, trunk, head, postprocessor) for one modality from its config.

    ``architecture``: for a timm or transformers trunk, what :func:`~bindspace.nn.pretrained.trunk_architecture`
    recorded; the trunk is then built from it with random weights, without reading ``trunk.pretrained``
    (how checkpoints are loaded: the weights are in the checkpoint, the source is provenance).
    """
    spec, t = get_modality(cfg.name), cfg.trunk
    if t.kind == "transformer":
        try:
            pre = spec.build_preprocessor(cfg.input, t.width)
            trunk = TransformerTrunk(
                t.width, t.depth, t.heads, t.mlp_ratio, t.drop_path, t.pre_norm, spec.causal, t.kv_bias, t.norm_eps
            )
        except ValueError as err:  # geometry that does not fit: name the modality's config
            raise ConfigError(f"modalities.{cfg.name}: {err}") from err
        width = t.width
    elif t.kind == "timm":
        channels, size = _timm_input(cfg)
        try:
            pre, trunk, width = build_timm_trunk(t.name, t.pretrained, channels, size, t.drop_path, architecture)
        except ValueError as err:
            raise ConfigError(f"modalities.{cfg.name}.trunk: {err}") from None
    elif t.kind == "hf":
        pre, trunk, width = build_hf_trunk(t.pretrained, t.trust_remote_code, architecture)
    else:
        raise ValueError(f"modalities.{cfg.name}.trunk.kind must be transformer, timm or hf; got {t.kind!r}")
    if t.grad_checkpointing:
        trunk.grad_checkpointing = True
    _fit_finetuning(cfg, trunk)
    head = Head(width, embed_dim, cfg.head.pool, cfg.head.dropout)
    return pre, trunk, head, Normalize()


def _timm_input(cfg: ModalityConfig) -> tuple[int, int | None]:
    """(channels, size) of a modality's model input for a timm trunk, from its spec's own example input.

    timm models take ``(B, C, H, W)``: images, depth and thermal, and spectrograms ``(C, mel bins, frames)``
    (a clip axis is flattened into the batch first). ``size`` is the square side a ViT needs, if any.
    """
    x = get_modality(cfg.name).dummy_input(cfg.input, 1, torch.Generator().manual_seed(0))
    if isinstance(x, Tensor) and get_modality(cfg.name).clip_axis:
        x = x.flatten(0, 1)
    if not isinstance(x, Tensor) or x.ndim != 4:
        shape = tuple(x.shape[1:]) if isinstance(x, Tensor) else type(x).__name__
        raise ConfigError(
            f"modalities.{cfg.name}.trunk.kind=timm needs a (channels, height, width) input; {cfg.name}'s model "
            f"input is {shape}"
        )
    return int(x.shape[1]), getattr(cfg.input, "size", None)


def _fit_finetuning(cfg: ModalityConfig, trunk: nn.Module) -> None:
    """``trunk.unlocked_layers`` against the built trunk's depth, and its ``trunk.adapter`` injected (peft)."""
    t, where = cfg.trunk, f"modalities.{cfg.name}.trunk"
    if t.unlocked_layers is not None:
        try:
            depth = trunk_layout(trunk).depth
        except ValueError as err:
            raise ConfigError(f"{where}.unlocked_layers: {err}") from None
        if t.unlocked_layers > depth:
            raise ConfigError(f"{where}.unlocked_layers={t.unlocked_layers} but the {t.kind} trunk has {depth} blocks")
    if t.adapter is not None:
        try:
            apply_adapter(trunk, AdapterConfig(**t.adapter))
        except ValueError as err:
            raise ConfigError(f"{where}.adapter.{err}") from None


class BindSpaceModel(nn.Module):
    """Encodes any subset of its modalities into one shared, unit-norm embedding space.

    Args:
        modalities: per-modality configs, keyed by modality name.
        embed_dim: dimension of the shared space.
        architectures: per modality, a recorded pretrained-trunk architecture (:meth:`architectures`)
            to build instead of loading ``trunk.pretrained``.
    """

    def __init__(
        self,
        modalities: Mapping[str, ModalityConfig],
        embed_dim: int,
        architectures: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be positive, got {embed_dim}")
        self.embed_dim = embed_dim
        self.configs = dict(modalities)
        recorded = dict(architectures or {})
        parts = {name: build_encoder_parts(cfg, embed_dim, recorded.get(name)) for name, cfg in self.configs.items()}
        for i, stage in enumerate(STAGES):
            setattr(self, stage, nn.ModuleDict({name: p[i] for name, p in parts.items()}))
        for name in self.configs:
            self.set_frozen(name)  # trunk.freeze, trunk.unlocked_layers and adapters decide what trains

    @property
    def modalities(self) -> list[str]:
        return list(self.configs)

    def architectures(self) -> dict[str, dict[str, Any]]:
        """Per modality with a timm or transformers trunk, what rebuilds it with no pretrained source."""
        recorded = {m: trunk_architecture(self.trunks[m]) for m in self.modalities}
        return {m: a for m, a in recorded.items() if a is not None}

    def encode(self, modality: str, x: ModelInput) -> Tensor:
        """Model input for one modality -> ``(B, embed_dim)`` unit-norm embeddings.

        Inputs with a clip axis (audio ``(B, S, 1, F, T)``: ImageBind's several clips per sample) are
        encoded per clip and averaged, then renormalised.
        """
        if modality not in self.configs:
            raise KeyError(f"model has no {modality!r} encoder; it has {self.modalities}")
        clips = self._clip_count(modality, x)
        if clips:
            x = x.flatten(0, 1)
        tokens, mask = self.preprocessors[modality](x)
        tokens = self.trunks[modality](tokens, mask)
        emb = self.heads[modality](tokens, mask)
        return self._finish(modality, emb, clips)

    def _finish(self, modality: str, emb: Tensor, clips: int) -> Tensor:
        emb = self.postprocessors[modality](emb)
        if clips:
            emb = self.postprocessors[modality](emb.unflatten(0, (-1, clips)).mean(1))
        return emb

    def encode_features(self, modality: str, x: ModelInput) -> Tensor:
        """The trunk's pooled token before the head, ``(B, W)`` or ``(B, clips, W)``.

        With a frozen tokenizer and trunk this is a fixed function of the sample, which is what the
        frozen-encoder cache stores; :meth:`encode_from_features` finishes the encoding.
        """
        head = self.heads[modality]
        if not head.cacheable:
            raise ValueError(f"{modality}: head.pool={head.pool!r} has no per-sample feature (needs cls or eos)")
        clips = self._clip_count(modality, x)
        if clips:
            x = x.flatten(0, 1)
        tokens, mask = self.preprocessors[modality](x)
        feats = head.select(self.trunks[modality](tokens, mask), mask)
        return feats.unflatten(0, (-1, clips)) if clips else feats

    def encode_from_features(self, modality: str, features: Tensor) -> Tensor:
        """:meth:`encode_features` output -> unit-norm embeddings, through the (possibly trainable) head."""
        clips = features.shape[1] if get_modality(modality).clip_axis else 0
        emb = self.heads[modality].project(features.flatten(0, 1) if clips else features)
        return self._finish(modality, emb, clips)

    def _clip_count(self, modality: str, x: ModelInput) -> int:
        """S for a modality whose spec declares a clip axis (input ``(B, S, ...)``), else 0."""
        if not get_modality(modality).clip_axis:
            return 0
        if not isinstance(x, Tensor) or x.ndim < 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{modality} input must be (B, S, ...) with a clip axis (its spec's clip_axis), got {shape}"
            )
        return x.shape[1]

    def forward(self, inputs: Mapping[str, ModelInput]) -> dict[str, Tensor]:
        return {m: self.encode(m, x) for m, x in inputs.items()}

    def set_frozen(self, modality: str, parts: Iterable[str] = (), unlocked_layers: int | str | None = None) -> None:
        """Freeze exactly ``parts`` of one encoder (``preprocessor``, ``trunk``, ``head``); the rest trains.

        A modality whose config freezes its trunk (``trunk.freeze``) keeps its tokenizer and trunk frozen
        whatever ``parts`` says. Frozen parameters get ``requires_grad=False``: they receive no gradient,
        so the optimizer leaves them (and their weight decay) alone.

        Within a trunk that is not frozen, ``trunk.unlocked_layers=N`` trains its last N blocks and final
        norm only (its tokenizer then stays frozen too), and an adapter (``trunk.adapter``) trains its own
        weights instead of the trunk's. ``unlocked_layers`` overrides the config's N for this call (a
        curriculum stage that unlocks more): an integer, or ``"all"`` to train the whole trunk (its tokenizer,
        and an adapter together with the weights it adapts).
        """
        frozen = set(parts)
        unknown = frozen - set(ENCODER_PARTS)
        if unknown:
            raise ValueError(f"unknown encoder part(s) {sorted(unknown)}; parts are {list(ENCODER_PARTS)}")
        t = self.configs[modality].trunk
        if t.freeze:
            frozen |= {"preprocessor", "trunk"}
        if unlocked_layers == "all":  # the whole trunk: with an adapter, the weights it adapts as well
            n, adapters = None, set()
        else:
            n = t.unlocked_layers if unlocked_layers is None else unlocked_layers
            adapters = adapter_parameter_names(self.trunks[modality]) if t.adapter is not None else set()
        if n is not None or adapters:
            frozen.add("preprocessor")  # below the first block: what partial unlocking and adapters keep as is
        for part, module in self.encoder_parts(modality).items():
            for p in module.parameters():
                p.requires_grad_(part not in frozen)
        if "trunk" not in frozen and (n is not None or adapters):
            trainable = trunk_trainable(self.trunks[modality], n, adapters)
            for name, p in self.trunks[modality].named_parameters():
                p.requires_grad_(trainable[name])

    def encoder_parts(self, modality: str) -> dict[str, nn.Module]:
        """The trainable parts of one encoder by name (the postprocessor has no parameters)."""
        return {part: getattr(self, f"{part}s")[modality] for part in ENCODER_PARTS}

    def frozen_parts(self, modality: str) -> list[str]:
        """The parts of one encoder none of whose parameters train."""
        return [
            part
            for part, module in self.encoder_parts(modality).items()
            if not any(p.requires_grad for p in module.parameters())
        ]

    def train(self, mode: bool = True) -> BindSpaceModel:
        """Frozen parts stay in eval mode (no dropout, no stochastic depth) while training.

        So do the frozen batch norms inside a partly trained trunk (a CNN's locked stages): their running
        statistics are part of what is frozen, as open_clip's ``freeze_batch_norm_2d`` keeps them.
        """
        super().train(mode)
        for m in self.modalities:
            parts = self.encoder_parts(m)
            for part in self.frozen_parts(m):
                parts[part].eval()
            if mode:
                for module in self.frozen_batch_norms(m):
                    module.eval()
        return self

    def frozen_batch_norms(self, modality: str) -> list[nn.Module]:
        """The batch norms of a trunk whose own parameters are all frozen (``train`` keeps them in eval mode)."""
        return [
            module
            for module in self.trunks[modality].modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
            and (own := list(module.parameters(recurse=False)))
            and not any(p.requires_grad for p in own)
        ]

    def lockable_parameters(self) -> list[nn.Parameter]:
        """Parameters frozen by partial unlocking or an adapter, which a curriculum stage may unlock.

        Unlike those of ``trunk.freeze`` they belong in the optimizer (with no state until they train).
        """
        out = []
        for m, cfg in self.configs.items():
            if cfg.trunk.freeze or (cfg.trunk.unlocked_layers is None and cfg.trunk.adapter is None):
                continue
            out += [p for stage in ("preprocessors", "trunks") for p in getattr(self, stage)[m].parameters()]
        return out

    def frozen_modalities(self) -> list[str]:
        """Modalities whose trunk is frozen (their pooled trunk features are a fixed function of the sample)."""
        return [m for m in self.modalities if not any(p.requires_grad for p in self.trunks[m].parameters())]

    def trainable_parameter_counts(self) -> dict[str, dict[str, int]]:
        """Per modality, how many parameters train now (``requires_grad``): its whole encoder and its trunk."""

        def count(params: Iterable[nn.Parameter]) -> int:
            return sum(p.numel() for p in params if p.requires_grad)

        return {
            m: {"encoder": count(self.encoder_parameters(m)), "trunk": count(self.trunks[m].parameters())}
            for m in self.modalities
        }

    def encoder_parameters(self, modality: str) -> Iterable[nn.Parameter]:
        for stage in STAGES:
            yield from getattr(self, stage)[modality].parameters()
