"""ImageBind state dicts -> bindspace checkpoints, key by key, with nothing of ImageBind imported.

``ImageBindModel`` (Meta's ``imagebind/models/imagebind_model.py``) keeps its encoders in four
ModuleDicts keyed ``vision, text, audio, depth, thermal, imu``; bindspace keeps the same four stages
(``preprocessors``, ``trunks``, ``heads``, ``postprocessors``). The sizes (widths, depths, embedding
size, patch and input geometry, key/value biases) are read from the tensors' shapes; head counts are
not in the weights and default to ImageBind-huge's. Every other setting comes from bindspace's
``huge`` preset, which is ImageBind-huge's recipe (drop path, three audio clips, head dropout).

Every source key is either mapped to one bindspace parameter, or recorded in the config (the
postprocessors' logit scales: bindspace keeps temperatures in the loss), or checked and dropped (the
text trunk's causal mask buffer, which bindspace's causal trunk computes). Anything else fails
with :class:`ConversionError`, one line naming the keys.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from bindspace.errors import ConfigError
from bindspace.modalities import get_modality
from bindspace.modalities.text import CLIP_BPE, CLIP_VOCAB
from bindspace.models.model import BindSpaceModel

# ImageBind's modality names -> bindspace's.
MODALITIES = {"vision": "image", "text": "text", "audio": "audio", "depth": "depth", "thermal": "thermal", "imu": "imu"}
# ImageBind-huge's attention heads (imagebind_huge(); not recorded in the weights).
HUGE_HEADS = {"image": 16, "text": 16, "audio": 12, "depth": 8, "thermal": 12, "imu": 8}
# Where each stem's convolution or linear sits, and whether it has a LayerNorm (vision has none).
STEMS = {
    "vision": ("rgbt_stem.proj.1", None),
    "audio": ("rgbt_stem.proj", "rgbt_stem.norm_layer"),
    "depth": ("depth_stem.proj", "depth_stem.norm_layer"),
    "thermal": ("rgbt_stem.proj", "rgbt_stem.norm_layer"),
    "imu": ("imu_stem.proj", "imu_stem.norm_layer"),
}
IMU_CHANNELS = 6
MAX_NAMED = 8  # keys named in one error line


class ConversionError(ConfigError):
    """A state dict that does not convert; the message names the keys."""


def _named(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_NAMED])
    return f"[{shown}{f', ... (+{len(keys) - MAX_NAMED} more)' if len(keys) > MAX_NAMED else ''}]"


def _need(sd: Mapping[str, Tensor], key: str, ndim: int) -> Tensor:
    if key not in sd:
        raise ConversionError(f"missing key {key}")
    if sd[key].ndim != ndim:
        raise ConversionError(f"{key}: shape {tuple(sd[key].shape)} is not {ndim}-dimensional as ImageBind's")
    return sd[key]


def _grid_size(sd: Mapping[str, Tensor], key: str, patch: int) -> int:
    """The square input side whose ``patch``-sized patches give ``pos_embed``'s tokens (one CLS token)."""
    tokens = _need(sd, key, 3).shape[1] - 1
    side = math.isqrt(max(tokens, 0))
    if side * side != tokens or side == 0:
        raise ConversionError(f"{key}: {tokens + 1} tokens is not 1 + a square grid of patches")
    return side * patch


def _infer(sd: Mapping[str, Tensor], ib: str, heads: int) -> tuple[dict[str, Any], int]:
    """One modality's bindspace config (plain data) and its embedding size, from the shapes of its weights."""
    pre, trunk, head = f"modality_preprocessors.{ib}", f"modality_trunks.{ib}", f"modality_heads.{ib}"
    width = _need(sd, f"{trunk}.blocks.0.norm_1.weight", 1).shape[0]
    blocks = {int(m.group(1)) for k in sd if (m := re.match(rf"{re.escape(trunk)}\.blocks\.(\d+)\.", k))}
    hidden = _need(sd, f"{trunk}.blocks.0.mlp.fc1.weight", 2).shape[0]
    if width % heads:
        raise ConversionError(f"{trunk}.blocks.0.norm_1.weight: width {width} is not divisible by {heads} heads")
    trunk_cfg = {
        "width": width,
        "depth": max(blocks) + 1,
        "heads": heads,
        "mlp_ratio": hidden / width,
        "pre_norm": f"{trunk}.pre_transformer_layer.0.weight" in sd,
        "kv_bias": f"{trunk}.blocks.0.attn.bias_k" in sd,
        "norm_eps": 1e-6,
    }
    proj = {"text": f"{head}.proj.1.weight", "imu": f"{head}.3.weight"}.get(ib, f"{head}.2.weight")
    embed_dim = _need(sd, proj, 2).shape[0]
    cfg: dict[str, Any] = {"trunk": trunk_cfg, "input": _infer_input(sd, ib, pre)}
    scale = f"modality_postprocessors.{ib}.1.log_logit_scale"
    # Vision has no scale of its own (image-anchored edges use the other side's); a meta tensor has no value.
    if scale in sd and not sd[scale].is_meta:
        cfg["logit_scale"] = {"init": float(sd[scale].float().exp())}
    return cfg, embed_dim


def _infer_input(sd: Mapping[str, Tensor], ib: str, pre: str) -> dict[str, Any]:
    if ib == "text":
        vocab = _need(sd, f"{pre}.token_embedding.weight", 2).shape[0]
        if vocab != CLIP_VOCAB:
            raise ConversionError(f"{pre}.token_embedding.weight: {vocab} ids, ImageBind's CLIP BPE has {CLIP_VOCAB}")
        return {"tokenizer": CLIP_BPE, "context_length": _need(sd, f"{pre}.pos_embed", 3).shape[1]}
    conv = _need(sd, f"{pre}.{STEMS[ib][0]}.weight", 2 if ib == "imu" else 5 if ib == "vision" else 4)
    if ib == "imu":
        patch, rest = divmod(conv.shape[1], IMU_CHANNELS)
        if rest:
            raise ConversionError(f"{pre}.imu_stem.proj.weight: {conv.shape[1]} inputs is not 6 axes x a patch length")
        return {"patch": patch, "length": (_need(sd, f"{pre}.pos_embed", 3).shape[1] - 1) * patch}
    patch = conv.shape[-1]
    if conv.shape[-2] != patch:
        raise ConversionError(f"{pre}.{STEMS[ib][0]}.weight: non-square patch {tuple(conv.shape[-2:])}")
    pos = f"{pre}.pos_embedding_helper.pos_embed"
    if ib == "audio":  # the grid depends on the stride, which no weight records: check huge's geometry
        a = get_modality("audio").default_config("huge").input
        grid = ((a.num_mel_bins - patch) // a.patch_stride + 1) * ((a.target_frames - patch) // a.patch_stride + 1)
        if _need(sd, pos, 3).shape[1] != grid + 1:
            raise ConversionError(
                f"{pos}: {sd[pos].shape[1]} tokens, but {a.num_mel_bins} mel bins x {a.target_frames} frames in "
                f"{patch} px patches at stride {a.patch_stride} give {grid + 1}"
            )
        return {"patch_size": patch}
    out = {"patch_size": patch, "size": _grid_size(sd, pos, patch)}
    if ib == "vision":
        out["frames"] = conv.shape[2]
    return out


def _key_map(ib: str, cfg: Mapping[str, Any]) -> dict[str, str]:
    """ImageBind key -> bindspace key, for one modality whose config is ``cfg``."""
    m = MODALITIES[ib]
    pre, trunk, head = f"modality_preprocessors.{ib}", f"modality_trunks.{ib}", f"modality_heads.{ib}"
    out: dict[str, str] = {}
    if ib == "text":
        out[f"{pre}.token_embedding.weight"] = f"preprocessors.{m}.token_embedding.weight"
        out[f"{pre}.pos_embed"] = f"preprocessors.{m}.pos_embed"
    else:
        conv, norm = STEMS[ib]
        out[f"{pre}.{conv}.weight"] = f"preprocessors.{m}.proj.weight"
        if norm:
            out |= {f"{pre}.{norm}.{p}": f"preprocessors.{m}.norm.{p}" for p in ("weight", "bias")}
        out[f"{pre}.cls_token"] = f"preprocessors.{m}.cls_token"
        pos = f"{pre}.pos_embed" if ib == "imu" else f"{pre}.pos_embedding_helper.pos_embed"
        out[pos] = f"preprocessors.{m}.pos_embed"
    t = cfg["trunk"]
    if t["pre_norm"]:
        out |= {f"{trunk}.pre_transformer_layer.0.{p}": f"trunks.{m}.pre_norm.{p}" for p in ("weight", "bias")}
    block = {
        "attn.in_proj_weight": "attn.qkv.weight",
        "attn.in_proj_bias": "attn.qkv.bias",
        "attn.out_proj.weight": "attn.proj.weight",
        "attn.out_proj.bias": "attn.proj.bias",
        "norm_1.weight": "norm1.weight",
        "norm_1.bias": "norm1.bias",
        "norm_2.weight": "norm2.weight",
        "norm_2.bias": "norm2.bias",
        **{f"mlp.{fc}.{p}": f"mlp.{fc}.{p}" for fc in ("fc1", "fc2") for p in ("weight", "bias")},
    }
    if t["kv_bias"]:
        block |= {"attn.bias_k": "attn.bias_k", "attn.bias_v": "attn.bias_v"}
    for i in range(t["depth"]):
        out |= {f"{trunk}.blocks.{i}.{s}": f"trunks.{m}.blocks.{i}.{d}" for s, d in block.items()}
    norm, proj = {"text": ("proj.0", "proj.1"), "imu": ("0", "3")}.get(ib, ("0", "2"))
    out |= {f"{head}.{norm}.{p}": f"heads.{m}.norm.{p}" for p in ("weight", "bias")}
    out[f"{head}.{proj}.weight"] = f"heads.{m}.proj.weight"
    return out


def convert_state_dict(
    sd: Mapping[str, Tensor], heads: Mapping[str, int] | None = None
) -> tuple[dict[str, Any], dict[str, Tensor], int]:
    """An ImageBindModel state dict -> (bindspace modality configs as plain data, bindspace state dict, embed_dim).

    Args:
        sd: ``ImageBindModel.state_dict()`` (any subset of its six modalities, all of each one's keys).
        heads: attention heads by modality (bindspace names); the rest default to ImageBind-huge's.

    Raises:
        ConversionError: not an ImageBind state dict, missing or left-over keys, or shapes no config
            explains (one line naming the keys).
    """
    found = [ib for ib in MODALITIES if any(k.startswith(f"modality_trunks.{ib}.") for k in sd)]
    if not found:
        keys = _named(list(sd))
        raise ConversionError(f"not an ImageBind state dict: no modality_trunks.<modality>.* key; keys {keys}")
    heads = {**HUGE_HEADS, **(heads or {})}
    configs, key_map, dims = {}, {}, {}
    for ib in found:
        m = MODALITIES[ib]
        cfg, dims[m] = _infer(sd, ib, heads[m])
        configs[m] = cfg
        key_map |= _key_map(ib, cfg)
    if len(set(dims.values())) != 1:
        raise ConversionError(f"the heads project to different sizes {dims}; one shared space has one")
    embed_dim = next(iter(dims.values()))
    consumed = {f"modality_postprocessors.{ib}.1.log_logit_scale" for ib in found} | _check_text_mask(sd, found)
    missing = [k for k in key_map if k not in sd]
    if missing:
        raise ConversionError(f"{len(missing)} key(s) of an ImageBind model missing: {_named(missing)}")
    left = [k for k in sd if k not in key_map and k not in consumed]
    if left:
        raise ConversionError(f"{len(left)} key(s) not mapped to bindspace (left over): {_named(left)}")
    return configs, _load_into(configs, embed_dim, sd, key_map), embed_dim


def _check_text_mask(sd: Mapping[str, Tensor], found: list[str]) -> set[str]:
    """The text preprocessor's causal mask buffer: checked, then dropped (bindspace's causal trunk builds it)."""
    key = "modality_preprocessors.text.mask"
    if "text" not in found or key not in sd:
        return set()
    mask = sd[key]
    n = mask.shape[-1]
    causal = torch.full((n, n), float("-inf")).triu(1)
    if mask.shape != (n, n) or (not mask.is_meta and not torch.equal(mask.float(), causal)):
        raise ConversionError(f"{key}: not the causal mask bindspace's text trunk applies")
    return {key}


def build_configs(configs: Mapping[str, Any]) -> dict[str, Any]:
    """Plain per-modality config data -> validated :class:`~bindspace.modalities.ModalityConfig`, over ``huge``."""
    try:
        return {m: get_modality(m).config_from_dict(c, preset="huge") for m, c in configs.items()}
    except ConfigError as err:
        raise ConversionError(str(err)) from None


def _load_into(configs, embed_dim: int, sd: Mapping[str, Tensor], key_map: Mapping[str, str]) -> dict[str, Tensor]:
    """The mapped tensors, checked against the shapes of the model their configs build (on the meta device)."""
    try:
        with torch.device("meta"):
            expected = BindSpaceModel(build_configs(configs), embed_dim).state_dict()
    except ValueError as err:
        raise ConversionError(f"the shapes describe no buildable model ({err})") from None
    out = {dst: sd[src] for src, dst in key_map.items()}
    bad = [f"{s} {tuple(sd[s].shape)} (expected {tuple(expected[d].shape)})"
           for s, d in key_map.items() if d in expected and tuple(sd[s].shape) != tuple(expected[d].shape)]  # fmt: skip
    unfilled = sorted(set(expected) - set(out))
    if bad:
        raise ConversionError(f"shapes no config explains: {_named(bad)}")
    extra = sorted(set(out) - set(expected))
    if unfilled or extra:  # a mapping bug, not a user error: the key lists above are built from the same config
        raise ConversionError(f"mapping does not cover the model: {_named(unfilled or extra)}")
    return {k: v.detach().clone().contiguous() for k, v in out.items()}
