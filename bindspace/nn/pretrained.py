"""Trunks from pretrained timm and transformers models, split into ImageBind's four stages.

Pretrained sources are data: a hub id or a local folder (timm ``save_for_hf`` / transformers
``save_pretrained``). A local folder is always preferred when it exists, so nothing is downloaded
when the weights are on disk; set ``HF_HUB_OFFLINE=1`` to make a missing folder an error rather than
a download.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bindspace.nn.layers import Tokens


def _local_folder(kind: str, pretrained: str) -> Path | None:
    """The local folder a pretrained source names, or None for a hub id or timm name.

    A source that is written as a path (absolute, ``~``, ``./``, timm's ``local-dir:``) but is no folder
    is an error: read as a hub id it would fail later with a far less clear message.
    """
    source = pretrained.removeprefix("local-dir:") if kind == "timm" else pretrained
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve()
    if source != pretrained or path.is_absolute() or source.startswith((".", "~")):
        raise ValueError(f"no such folder: {path}")
    return None


def pretrained_width(kind: str, pretrained: str | None, trust_remote_code: bool = False) -> int | None:
    """The hidden width of a pretrained trunk in a local folder, read from its config file alone (no weights).

    Args:
        kind: ``timm`` (a ``save_for_hf`` folder: ``num_features``) or ``hf`` (a ``save_pretrained``
            folder: the transformers config's ``hidden_size``).
        pretrained: the trunk's ``pretrained`` source.
        trust_remote_code: passed to transformers for configs of custom architectures.

    Returns:
        The width, or None when there is nothing local to read (no source, or a hub id: validation
        never touches the network).

    Raises:
        ValueError: a path that is no folder, or a folder whose config cannot be read or names no width.
    """
    if pretrained is None or kind not in ("timm", "hf"):
        return None
    path = _local_folder(kind, pretrained)
    if path is None:
        return None
    if kind == "hf":
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read the transformers config in {path} ({err})") from None
        width = getattr(config, "hidden_size", None)  # attribute_map covers dim, d_model, n_embd
    else:
        file = path / "config.json"
        if not file.is_file():
            raise ValueError(f"{path} has no config.json (save it with timm's save_for_hf)")
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(f"{file} is not readable JSON ({err})") from None
        width = config.get("num_features") or (config.get("model_args") or {}).get("embed_dim")
    if not isinstance(width, int) or isinstance(width, bool):
        raise ValueError(f"the config in {path} names no hidden size")
    return width


def _timm_source(name: str | None, pretrained: str | None) -> tuple[str, bool]:
    """The timm model id to create and whether to load weights."""
    if pretrained is None:
        if name is None:
            raise ValueError("trunk.kind=timm needs trunk.name (a timm architecture) or trunk.pretrained")
        return name, False
    path = Path(pretrained).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"pretrained timm folder {path} has no config.json (save it with timm's save_for_hf)"
            )
        return f"local-dir:{path.resolve()}", True
    if pretrained.startswith(("hf-hub:", "local-dir:")):
        return pretrained, True
    if "/" in pretrained:
        return f"hf-hub:{pretrained}", True
    return pretrained, True  # a timm name with its default pretrained tag


class TimmViTTokenizer(nn.Module):
    """The embedding half of a timm ViT: patch embedding, class token, positions, pre-norm."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.patch_embed = vit.patch_embed
        self.cls_token = vit.cls_token
        self.reg_token = getattr(vit, "reg_token", None)
        self.pos_embed = vit.pos_embed
        self.no_embed_class = getattr(vit, "no_embed_class", False)
        self.pos_drop = vit.pos_drop
        self.norm_pre = vit.norm_pre

    def forward(self, x: Tensor) -> Tokens:
        x = self.patch_embed(x)  # (B, N, W)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if self.no_embed_class:
            x = torch.cat([*prefix, x + self.pos_embed], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + self.pos_embed
        return self.norm_pre(self.pos_drop(x)), None


class TimmViTTrunk(nn.Module):
    """The block half of a timm ViT (its final norm included, so pretrained features are unchanged)."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.blocks = vit.blocks
        self.norm = vit.norm
        self.grad_checkpointing = False

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        x = tokens
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)


def _timm_model_args(model_id: str) -> dict[str, Any]:
    """The ``model_args`` a timm source adds to its architecture's defaults (a folder's or hub repo's config.json)."""
    if model_id.startswith("local-dir:"):
        file = Path(model_id.removeprefix("local-dir:")) / "config.json"
        return dict(json.loads(file.read_text(encoding="utf-8")).get("model_args") or {})
    if model_id.startswith("hf-hub:"):  # already downloaded (and cached) by create_model
        from timm.models import load_model_config_from_hf

        return dict(load_model_config_from_hf(model_id.removeprefix("hf-hub:"))[2] or {})
    return {}


class TimmCNNInput(nn.Module):
    """A timm CNN's input passes through: its stem is the trunk's layer 0, as a ViT's patch embedding is."""

    def forward(self, x: Tensor) -> Tokens:
        return x, None


class TimmCNNTrunk(nn.Module):
    """A timm convolutional network up to and including its global pooling: one token ``(B, 1, C)``.

    timm's ``forward_features`` then ``forward_head(pre_logits=True)`` (the classifier removed with
    ``num_classes=0``), so the head's ``cls`` pooling picks the pooled feature, and a frozen CNN's
    features are cacheable as a frozen ViT's class token is. Any input size works (global pooling):
    images, depth, thermal, and spectrograms ``(B, 1, mel bins, frames)``.

    The layout that partial unlocking and layer decay read is timm's own coarse parameter grouping
    (``group_matcher(coarse=True)``, what open_clip's ``--lock-image-unlocked-groups`` uses): group 0 is
    the stem, then one group per stage (a ResNet's ``layer1``..``layer4``), so ``unlocked_layers=N``
    trains the last N stages.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        from timm.models import group_parameters

        groups = group_parameters(model, model.group_matcher(coarse=True))
        # Layer of each parameter's module, by module name: an adapter's names (peft's ``base_layer``,
        # ``lora_A``) live under the module it wraps, so they resolve to its layer too.
        self.module_layers = {
            f"model.{name.rpartition('.')[0]}": int(layer) for layer, names in groups.items() for name in names
        }
        self.depth = max(self.module_layers.values(), default=0)

    @property
    def grad_checkpointing(self) -> bool:
        return bool(getattr(self.model, "grad_checkpointing", False))

    @grad_checkpointing.setter
    def grad_checkpointing(self, enable: bool) -> None:
        try:
            self.model.set_grad_checkpointing(enable)
        except (AssertionError, NotImplementedError) as err:  # timm asserts on models without it
            if enable:
                raise ValueError(f"timm model {type(self.model).__name__} has no gradient checkpointing") from err

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.model.forward_head(self.model.forward_features(tokens), pre_logits=True)[:, None]


def build_timm_trunk(
    name: str | None,
    pretrained: str | None,
    in_chans: int,
    img_size: int | None,
    drop_path: float,
    architecture: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, nn.Module, int]:
    """Create a timm model and split it; returns (tokenizer, trunk, width).

    A ViT (timm's ``VisionTransformer`` and its kin: ``patch_embed`` and ``blocks``) is split into its
    embedding and its blocks and needs ``img_size``; any other timm model with ``forward_features`` and
    ``forward_head`` (ResNet, ConvNeXt, EfficientNet, MobileNet, RegNet, ...) is a convolutional trunk
    (:class:`TimmCNNTrunk`) and takes inputs of any size.

    With ``architecture`` (what :func:`trunk_architecture` recorded, e.g. from a checkpoint) the model is
    created from it with random weights, and ``name``/``pretrained`` are not looked at.
    """
    import timm  # here, not at the top: the modality registry imports this module, a config check needs no timm

    if architecture is not None:
        model_id, load, model_args = str(architecture["architecture"]), False, dict(architecture["model_args"])
    else:
        model_id, load = _timm_source(name, pretrained)
        model_args = {}
        if pretrained is None and not timm.is_model(model_id):
            close = difflib.get_close_matches(model_id, timm.list_models(), n=3)
            raise ValueError(
                f"name={model_id!r} is no timm model" + (f"; did you mean {', '.join(close)}?" if close else "")
            )
    common = {**model_args, "num_classes": 0, "in_chans": in_chans}
    if drop_path:
        common["drop_path_rate"] = drop_path
    try:
        try:  # only ViT-like constructors take img_size: one that refuses it is a CNN (before any weights load)
            model = timm.create_model(model_id, pretrained=load, **{**common, "img_size": img_size or 224})
        except TypeError as err:
            if "img_size" not in str(err):
                raise
            model = timm.create_model(model_id, pretrained=load, **common)
    except TypeError as err:
        if "drop_path_rate" in str(err):
            raise ValueError(f"drop_path={drop_path}: timm model {model_id!r} has no stochastic depth; set 0") from None
        raise
    # What rebuilds this trunk from a checkpoint without its pretrained source (see trunk_architecture).
    recorded = {
        "kind": "timm",
        "architecture": str(model.pretrained_cfg.get("architecture") or model_id.split(".")[0]),
        "model_args": model_args if architecture is not None else _timm_model_args(model_id),
    }
    if hasattr(model, "blocks") and hasattr(model, "patch_embed"):
        if img_size is None:
            raise ValueError(f"timm ViT {model_id!r} needs an image-like input (size, channels)")
        trunk, tokenizer, width = TimmViTTrunk(model), TimmViTTokenizer(model), model.embed_dim
    elif hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        trunk, tokenizer = TimmCNNTrunk(model), TimmCNNInput()
        width = int(getattr(model, "head_hidden_size", None) or model.num_features)
    else:
        raise ValueError(f"timm model {model_id!r} is neither a ViT (blocks, patch_embed) nor a CNN (forward_features)")
    trunk.architecture = recorded
    return tokenizer, trunk, width


class HFInputs(nn.Module):
    """Passes tokenizer output through: with a transformers trunk, tokenisation happens in the data transform."""

    def forward(self, x: dict[str, Tensor]) -> Tokens:
        return x["input_ids"], x["attention_mask"].bool()


class HFTrunk(nn.Module):
    """A transformers ``AutoModel`` returning its last hidden state ``(B, L, W)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        attention_mask = None if mask is None else mask.long()
        return self.model(input_ids=tokens, attention_mask=attention_mask).last_hidden_state


def resolve_hf_source(pretrained: str | None) -> str:
    if pretrained is None:
        raise ValueError("trunk.kind=hf needs trunk.pretrained (a hub id or a save_pretrained folder)")
    path = Path(pretrained).expanduser()
    return str(path.resolve()) if path.is_dir() else pretrained


def build_hf_trunk(
    pretrained: str | None, trust_remote_code: bool, architecture: Mapping[str, Any] | None = None
) -> tuple[HFInputs, HFTrunk, int]:
    """Load a transformers encoder; returns (passthrough preprocessor, trunk, hidden width).

    With ``architecture`` (what :func:`trunk_architecture` recorded, e.g. from a checkpoint) the model is
    built from that config with random weights, by transformers' own classes only: no source is read
    and no code runs, whatever the config's ``auto_map`` says.
    """
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    if architecture is not None:
        model = AutoModel.from_config(hf_config_from_dict(architecture["config"]), trust_remote_code=False)
    else:
        # transformers' "Loading weights" bar is stderr noise for a local model that loads in a second, and
        # would bury the one line of a config error found once the model is built (an adapter target it lacks).
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model = AutoModel.from_pretrained(resolve_hf_source(pretrained), trust_remote_code=trust_remote_code)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
    trunk = HFTrunk(model)
    config = model.config.to_dict()
    config.pop("auto_map", None)  # custom code is never part of what a checkpoint describes
    trunk.architecture = {"kind": "hf", "config": config}
    return HFInputs(), trunk, int(model.config.hidden_size)


def hf_config_from_dict(config: Mapping[str, Any]):
    """A transformers config of a built-in architecture from its ``to_dict()``; refuses custom ones.

    Raises:
        ValueError: no ``model_type``, or one transformers does not ship (custom code would be needed).
    """
    from transformers import CONFIG_MAPPING

    data = {k: v for k, v in config.items() if k != "auto_map"}
    model_type = data.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise ValueError(
            f"transformers architecture {model_type!r} is not built into transformers "
            "(custom code is never run from a recorded architecture)"
        )
    return CONFIG_MAPPING[model_type].from_dict(data)


def trunk_architecture(trunk: nn.Module) -> dict[str, Any] | None:
    """What rebuilds a pretrained trunk with random weights and no source: recorded in checkpoints.

    ``{"kind": "timm", "architecture": <timm name>, "model_args": {...}}`` or ``{"kind": "hf",
    "config": <transformers config dict>}``; None for bindspace's own transformers (their config says it all).
    """
    recorded = getattr(trunk, "architecture", None)
    return dict(recorded) if recorded is not None else None
