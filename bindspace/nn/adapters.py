"""Fine-tuning a trunk without training all of it: its layer layout, partial unlocking and peft adapters.

Every trunk bindspace builds (its own transformer, a timm ViT, a transformers ``AutoModel``) is read as
BEiT and open_clip read a ViT: *embeddings* (layer 0: whatever comes before the blocks), *blocks* 1..L,
and *final norms* (layer L + 1, after the blocks; bindspace's own trunks keep theirs in the head). A timm
CNN is read through timm's coarse parameter groups: the stem is layer 0 and its stages are the blocks.
Partial unlocking (``trunk.unlocked_layers=N``) trains the last N blocks and the final norm; layer-wise
lr decay (``optim.layer_decay``) scales each layer's lr by ``decay ** (L + 1 - layer)``.

Adapters come from the ``peft`` library (:func:`peft.inject_adapter_in_model`, no hand-written LoRA):
they wrap the trunk's targeted linear layers in place, so their weights sit in the model's own state
dict under ``...<layer>.lora_A.default.weight`` beside the frozen ``...<layer>.base_layer.weight``,
separable by name (:func:`adapter_parameter_names`) and mergeable into the base (:func:`merge_adapters`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

# Where the block list of a transformers model lives, by architecture family (BERT/MiniLM, RoBERTa,
# DistilBERT, GPT-2, T5 encoders, Llama-likes, CLIP/ViT/wav2vec2 encoders), relative to the model.
HF_BLOCK_PATHS = (
    "encoder.layer", "encoder.layers", "transformer.layer", "transformer.h", "h", "layers", "encoder.block",
    "blocks", "layer",
)  # fmt: skip
# Final norms after the blocks (relative to the model): what unlocking always trains and layer decay scales by 1.
HF_FINAL_NORMS = (
    "norm", "ln_f", "final_layer_norm", "layernorm", "layer_norm", "post_layernorm",
    "encoder.layer_norm", "encoder.final_layer_norm", "encoder.norm",
)  # fmt: skip


@dataclass(frozen=True)
class TrunkLayout:
    """Where a trunk's blocks and final norms are, by dotted module name inside the trunk."""

    blocks: str
    depth: int
    final: tuple[str, ...] = ()
    # Instead of a block list: the layer of each module by name (a timm CNN's parameter groups, stages 1..depth).
    module_layers: Mapping[str, int] | None = None

    def layer_id(self, name: str) -> int:
        """A trunk parameter's layer: 0 embeddings, ``i + 1`` for block ``i``, ``depth + 1`` for final norms."""
        if self.module_layers is not None:  # the innermost listed module holding the parameter
            module = name
            while module:
                module = module.rpartition(".")[0]
                if module in self.module_layers:
                    return self.module_layers[module]
            return 0
        prefix = self.blocks + "."
        if name.startswith(prefix):
            return int(name[len(prefix) :].split(".", 1)[0]) + 1
        if any(name == f or name.startswith(f + ".") for f in self.final):
            return self.depth + 1
        return 0


def trunk_layout(trunk: nn.Module) -> TrunkLayout:
    """The :class:`TrunkLayout` of a bindspace, timm or transformers trunk.

    Raises:
        ValueError: a trunk with no block list bindspace knows where to find.
    """
    module_layers = getattr(trunk, "module_layers", None)
    if module_layers is not None:  # a timm CNN: timm's coarse parameter groups (stem, then one per stage)
        return TrunkLayout("", int(trunk.depth), (), dict(module_layers))
    modules = dict(trunk.named_modules())
    if isinstance(modules.get("blocks"), nn.ModuleList | nn.Sequential):  # bindspace's TransformerTrunk, timm's ViT
        final = tuple(n for n in ("norm",) if n in modules and any(True for _ in modules[n].parameters()))
        return TrunkLayout("blocks", len(modules["blocks"]), final)
    if isinstance(modules.get("model"), nn.Module):  # HFTrunk: a transformers AutoModel
        for path in HF_BLOCK_PATHS:
            found = modules.get(f"model.{path}")
            if isinstance(found, nn.ModuleList | nn.Sequential) and len(found):
                final = tuple(
                    f"model.{n}" for n in HF_FINAL_NORMS if f"model.{n}" in modules and not n.startswith(path)
                )
                return TrunkLayout(f"model.{path}", len(found), final)
    lists = sorted(n for n, m in modules.items() if isinstance(m, nn.ModuleList | nn.Sequential))
    raise ValueError(
        f"{type(trunk).__name__}: no block list found (looked for blocks, model.{', model.'.join(HF_BLOCK_PATHS)}); "
        f"its module lists: {lists or 'none'}"
    )


# ---- adapters (peft) ------------------------------------------------------------------------------------
ADAPTER_KINDS = ("lora", "dora", "loha", "lokr")


@dataclass
class AdapterConfig:
    """``modalities.<m>.trunk.adapter``: one peft adapter on the trunk's ``target`` layers.

    ``kind``: ``lora`` (Hu et al. 2021), ``dora`` (LoRA with a learned magnitude, Liu et al. 2024),
    ``loha`` / ``lokr`` (Hadamard / Kronecker products, LyCORIS). ``target``: module names as peft
    matches them (a name or the last parts of a dotted name: ``qkv`` matches ``blocks.3.attn.qkv``);
    bindspace's and timm's blocks name theirs ``qkv``, ``proj``, ``fc1``, ``fc2``, BERT-like
    transformers ``query``, ``key``, ``value``, ``dense``.
    """

    kind: str = "lora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target: list[str] = field(default_factory=lambda: ["qkv", "proj"])


def _peft_config(cfg: AdapterConfig):
    import peft

    common = {"r": cfg.r, "target_modules": list(cfg.target)}
    if cfg.kind in ("lora", "dora"):
        return peft.LoraConfig(
            **common, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, use_dora=cfg.kind == "dora", bias="none"
        )
    if cfg.kind == "loha":
        return peft.LoHaConfig(**common, alpha=cfg.alpha, module_dropout=cfg.dropout)
    return peft.LoKrConfig(**common, alpha=cfg.alpha, module_dropout=cfg.dropout)


def _layer_names(trunk: nn.Module) -> list[str]:
    """The distinct last names of the trunk's linear and convolution layers (what targets can name)."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
    return sorted({n.rsplit(".", 1)[-1] for n, m in trunk.named_modules() if isinstance(m, kinds)})


def apply_adapter(trunk: nn.Module, cfg: AdapterConfig) -> list[str]:
    """Inject the adapter ``cfg`` describes into ``trunk`` in place (through peft); returns the adapted modules.

    Raises:
        ValueError: a target that matches no module of the trunk, or one peft cannot adapt; the message
            starts with ``target`` and names what it matched and the layer names the trunk has.
    """
    from peft import inject_adapter_in_model

    names = [n for n, _ in trunk.named_modules() if n]
    for target in cfg.target:
        if not any(n == target or n.endswith("." + target) for n in names):
            raise ValueError(
                f"target: {target!r} matches no module of the {type(trunk).__name__}; "
                f"its linear/conv layers are named {_layer_names(trunk)}"
            )
    try:
        inject_adapter_in_model(_peft_config(cfg), trunk)
    except (ValueError, TypeError) as err:  # e.g. a target naming a block or a norm, which peft cannot wrap
        matched = [n for n in names if any(n == t or n.endswith("." + t) for t in cfg.target)]
        raise ValueError(
            f"target: {cfg.target} matched {matched[:4]}{'...' if len(matched) > 4 else ''}, which "
            f"{cfg.kind} cannot adapt ({str(err).splitlines()[0]}); name linear layers: {_layer_names(trunk)}"
        ) from None
    return adapted_modules(trunk)


def adapted_modules(module: nn.Module) -> list[str]:
    """Names of the peft-wrapped layers inside ``module``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [n for n, m in module.named_modules() if isinstance(m, BaseTunerLayer)]


def adapter_parameter_names(module: nn.Module) -> set[str]:
    """Names (relative to ``module``) of the adapter's own parameters: everything a peft layer adds to its base."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = set()
    for name, layer in module.named_modules():
        if isinstance(layer, BaseTunerLayer):
            for pname, _ in layer.named_parameters():
                if not pname.startswith("base_layer."):
                    out.add(f"{name}.{pname}" if name else pname)
    return out


def adapter_state_dict(model: nn.Module) -> dict[str, Any]:
    """The adapters' own tensors from ``model``'s state dict (full names), and nothing of the base weights.

    What a LoRA checkpoint adds to its base model: small (``r * (in + out)`` per adapted layer) and
    separable by name, so it can be stored, shipped or swapped on its own.
    """
    names = adapter_parameter_names(model)
    return {k: v for k, v in model.state_dict().items() if k in names}


def merge_adapters(module: nn.Module) -> int:
    """Fold every adapter inside ``module`` into its base layer and put the base layer back; returns how many.

    The merged module has the state dict names of a never-adapted one (``...qkv.weight``), and computes
    what the adapted one computed (peft's ``merge``: ``W + scale * B @ A`` for LoRA).
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(n, m) for n, m in module.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in layers:
        layer.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())
    return len(layers)


def trunk_trainable(
    trunk: nn.Module, unlocked_layers: int | None, adapter_names: Iterable[str] = ()
) -> dict[str, bool]:
    """Which trunk parameters train, by name.

    ``unlocked_layers=None`` and no adapter: all of them. With an adapter: its own parameters. With
    ``unlocked_layers=N``: also the last N blocks and the final norm (N = 0: the final norm only).
    """
    adapters = set(adapter_names)
    names = [n for n, _ in trunk.named_parameters()]
    if unlocked_layers is None and not adapters:
        return dict.fromkeys(names, True)
    layout = trunk_layout(trunk)
    if unlocked_layers is not None and unlocked_layers > layout.depth:
        raise ValueError(f"unlocked_layers={unlocked_layers} but the trunk has {layout.depth} blocks")
    # The first layer that trains: the last N blocks and the final norm; with an adapter alone, none.
    first = layout.depth + 1 - unlocked_layers if unlocked_layers is not None else layout.depth + 2
    return {n: n in adapters or layout.layer_id(n) >= first for n in names}
