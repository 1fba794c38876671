"""Adapter files: what fine-tuning an encoder with an adapter trained, apart from the frozen base it adapts.

    bindspace-convert adapters runs/lora/checkpoints/last.ckpt audio_lora.safetensors
    bindspace-convert apply-adapters imagebind_huge.ckpt audio_lora.safetensors imagebind_audio_lora.ckpt

A run that gives a trunk an adapter (``modalities.<m>.trunk.adapter``, peft) trains the adapter, the
blocks ``trunk.unlocked_layers`` opens and the head; the trunk's other weights and its tokenizer stay
as the run started, usually from ``init_from`` (a converted ImageBind, an earlier run). ``adapters``
writes the trained tensors of each adapted encoder to one safetensors file, a few percent of the
checkpoint, with the modality's config (adapter, unlocking, input) and a SHA-256 fingerprint of the
frozen weights it was trained on. ``apply-adapters`` puts them on a checkpoint holding the same frozen
weights, checked against the fingerprint before anything is written: the result embeds that modality
exactly as the fine-tuned run did, every other encoder as the base does.

Everything read is data: checkpoints through ``torch.load(weights_only=True)``, adapter files through
safetensors (tensors, and metadata strings parsed as JSON); outputs are written atomically.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bindspace.errors import ConfigError
from bindspace.utils.io import atomic_write, read_safetensors

FORMAT = "bindspace-adapters/1"


class AdapterFileError(ConfigError):
    """An adapter file or checkpoint that cannot be used; the message names the file and what is wrong."""


def split_encoder(model, modality: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(trained, frozen)`` tensors of one encoder under its config (``model.<part>s.<modality>.*`` names).

    Trained: what ``set_frozen`` leaves trainable (the adapter, the unlocked blocks, the head). Frozen:
    every other parameter and every buffer of the encoder.
    """
    model.set_frozen(modality)
    trained, frozen = {}, {}
    for part, module in model.encoder_parts(modality).items():
        for name, p in module.named_parameters():
            (trained if p.requires_grad else frozen)[f"model.{part}s.{modality}.{name}"] = p.detach()
        for name, b in module.named_buffers():
            frozen[f"model.{part}s.{modality}.{name}"] = b.detach()
    return trained, frozen


def fingerprint(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 of names (an adapted layer's ``base_layer`` left out of them), dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name in sorted(tensors, key=lambda k: k.replace(".base_layer.", ".")):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name.replace('.base_layer.', '.')}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no copy of the bytes
    return digest.hexdigest()


def export_adapters(src: str | Path, out: str | Path) -> tuple[Path, dict[str, int]]:
    """Write what every adapted encoder of ``src`` trained to ``out``; returns (path, tensors per modality)."""
    from safetensors.torch import save

    from bindspace.inference import model_from_checkpoint_file

    src = Path(src)
    meta, model, _ = model_from_checkpoint_file(src, "src", "nothing says which trunks carry adapters")
    adapted = [m for m, c in model.configs.items() if c.trunk.adapter is not None]
    if not adapted:
        raise AdapterFileError(f"{src}: no modality has an adapter (trunk.adapter is null for {model.modalities})")
    tensors: dict[str, Tensor] = {}
    info: dict[str, Any] = {}
    for m in adapted:
        trained, frozen = split_encoder(model, m)
        tensors |= {k: v.contiguous() for k, v in trained.items()}
        info[m] = {"config": meta["modalities"][m], "base_sha256": fingerprint(frozen), "tensors": sorted(trained)}
    header = {"format": FORMAT, "modalities": json.dumps(info), "embed_dim": str(meta["embed_dim"]), "source": str(src)}
    path = atomic_write(Path(out), lambda f: f.write(save(tensors, metadata=header)))
    return path, {m: len(info[m]["tensors"]) for m in adapted}


def read_adapters(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor], int]:
    """``(modality -> {config, base_sha256, tensors}, tensors, embed_dim)`` of an adapter file (nothing executed)."""
    try:
        header, tensors = read_safetensors(path)
    except ValueError as err:
        raise AdapterFileError(f"{path}: not a readable adapter file ({err})") from None
    if header.get("format") != FORMAT:
        raise AdapterFileError(f"{path}: format {header.get('format')!r}, expected {FORMAT!r}")
    try:
        info, embed_dim = json.loads(header["modalities"]), int(header["embed_dim"])
    except (KeyError, ValueError, json.JSONDecodeError):
        raise AdapterFileError(f"{path}: metadata 'modalities'/'embed_dim' missing or not JSON") from None
    if not isinstance(info, dict) or not info:
        raise AdapterFileError(f"{path}: metadata 'modalities' names no modality")
    listed = set()
    for m, entry in info.items():
        if not isinstance(entry, dict) or not {"config", "base_sha256", "tensors"} <= set(entry):
            raise AdapterFileError(f"{path}: metadata of {m!r} needs config, base_sha256 and tensors")
        listed |= set(entry["tensors"])
    if listed != set(tensors):
        odd = sorted(listed ^ set(tensors))
        raise AdapterFileError(f"{path}: tensors and metadata disagree on {odd[:3]}")
    return info, tensors, embed_dim


def apply_adapters(base: str | Path, adapters: str | Path, out: str | Path) -> tuple[Path, list[str]]:
    """``base`` with the encoders of ``adapters`` fine-tuned as they were; returns (path, modalities applied).

    Raises:
        AdapterFileError: a modality or embedding size the base lacks, or frozen weights that differ from
            those the adapters were trained on (by fingerprint), naming the modality; nothing is written.
    """
    from bindspace.inference import model_from_checkpoint_file
    from bindspace.modalities import get_modality
    from bindspace.nn.adapters import AdapterConfig, apply_adapter
    from bindspace.training.checkpoints import ARCHITECTURE_KEYS

    base, adapters = Path(base), Path(adapters)
    info, tensors, embed_dim = read_adapters(adapters)
    meta, model, ckpt = model_from_checkpoint_file(base, "base", "nothing describes its encoders")
    if int(meta["embed_dim"]) != embed_dim:
        raise AdapterFileError(f"{adapters}: embed_dim {embed_dim}, but {base} has {meta['embed_dim']}")
    missing = [m for m in info if m not in model.modalities]
    if missing:
        raise AdapterFileError(f"{adapters}: modalities {missing} are not in {base} ({model.modalities})")
    new_meta = copy.deepcopy(dict(meta))
    for m, entry in info.items():
        try:
            cfg = get_modality(m).config_from_dict(entry["config"])
        except (ConfigError, TypeError, ValueError, KeyError) as err:
            raise AdapterFileError(f"{adapters}: modalities.{m}: unreadable config ({err})") from None
        if cfg.trunk.adapter is None:
            raise AdapterFileError(f"{adapters}: modalities.{m} has no trunk.adapter")
        differ = [
            f"modalities.{m}.{section}.{key}: {getattr(getattr(cfg, section), key, None)!r} in the file, "
            f"{getattr(getattr(model.configs[m], section), key, None)!r} in the base"
            for section, keys in ARCHITECTURE_KEYS.items()
            for key in keys
            if getattr(getattr(cfg, section), key, None) != getattr(getattr(model.configs[m], section), key, None)
        ]
        if differ:
            raise AdapterFileError(f"{adapters} does not fit {base}: {'; '.join(differ[:3])}")
        had = model.configs[m].trunk.adapter
        if had is not None and had != cfg.trunk.adapter:
            raise AdapterFileError(
                f"{base}: modalities.{m}.trunk.adapter is {had}, the file's {cfg.trunk.adapter}; apply to its base"
            )
        if had is None:
            apply_adapter(model.trunks[m], AdapterConfig(**cfg.trunk.adapter))
        model.configs[m] = cfg
        _, frozen = split_encoder(model, m)
        if fingerprint(frozen) != entry["base_sha256"]:
            raise AdapterFileError(
                f"{base}: the frozen weights of modalities.{m} are not those {adapters} was trained on "
                "(fingerprint differs); apply it to the checkpoint its run started from (init_from)"
            )
        new_meta["modalities"][m] = entry["config"]
    state = model.state_dict()
    for name, value in tensors.items():
        key = name.removeprefix("model.")
        if key not in state or state[key].shape != value.shape:
            found = "absent" if key not in state else tuple(state[key].shape)
            raise AdapterFileError(f"{adapters}: tensor {name} is {tuple(value.shape)}, {found} in the adapted model")
    model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items()}, strict=False)
    out_ckpt = {
        "state_dict": {
            **{k: v for k, v in ckpt["state_dict"].items() if not k.startswith("model.")},  # temperatures
            **{f"model.{k}": v for k, v in model.state_dict().items()},
        },
        "bindspace": new_meta,
        "adapters_from": {"base": str(base), "adapters": str(adapters), "modalities": sorted(info)},
    }
    return atomic_write(Path(out), lambda f: torch.save(out_ckpt, f)), sorted(info)
