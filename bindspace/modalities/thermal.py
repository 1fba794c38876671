"""Thermal images: 1-channel ViT (ImageBind: 768 wide, 12 blocks, 12 heads, patch 16, logit scale 10).

Readers return relative intensity in [0, 1] (8- or 16-bit PNG, or an already-normalised .npy);
it is standardised with ``mean``/``std``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from bindspace.errors import DataFileError
from bindspace.modalities._image_ops import dummy_image, resize_center_crop, to_chw_float
from bindspace.modalities.base import ModalitySpec, register_modality
from bindspace.modalities.files import PathLike, as_plane, checked_file, load_npy, read_gray_image, to_float32
from bindspace.nn.layers import PatchTokenizer

THERMAL_RANGE_TOLERANCE = 1e-3


@dataclass
class ThermalInput:
    size: int = 224
    patch_size: int = 16
    mean: float = 0.5
    std: float = 0.5
    channels: int = 1


def read_thermal(path: PathLike) -> np.ndarray:
    """Read a thermal image normalised to [0, 1].

    Args:
        path: 8-bit PNG/JPEG, 16-bit PNG, or .npy shaped (H, W) or (1, H, W): uint8, uint16, or
            float already normalised to [0, 1].

    Returns:
        float32 array (H, W) in [0, 1].

    Raises:
        DataFileError: Unreadable file, colour image, wrong shape or dtype, NaN/Inf, or float values
            outside [0, 1] beyond THERMAL_RANGE_TOLERANCE.
    """
    path = checked_file(path)
    if path.suffix.lower() != ".npy":
        stored = read_gray_image(path, ("PNG", "JPEG"))
        return stored.astype(np.float32) / np.iinfo(stored.dtype).max
    plane = as_plane(path, load_npy(path), "thermal")
    if plane.dtype.kind == "u" and plane.dtype.itemsize <= 2:  # either byte order
        return plane.astype(np.float32) / np.iinfo(plane.dtype).max
    if plane.dtype.kind != "f":
        raise DataFileError(path, f"thermal .npy must be uint8, uint16 or float in [0, 1], got dtype {plane.dtype}")
    thermal = to_float32(path, plane, "thermal")
    low, high = float(thermal.min()), float(thermal.max())
    if low < -THERMAL_RANGE_TOLERANCE or high > 1 + THERMAL_RANGE_TOLERANCE:
        raise DataFileError(path, f"float thermal must be normalised to [0, 1], found [{low:.4g}, {high:.4g}]")
    return np.clip(thermal, 0.0, 1.0)


@register_modality
class ThermalSpec(ModalitySpec):
    name = "thermal"
    input_config = ThermalInput
    # JPEG because the common thermal sets (e.g. LLVIP, used by ImageBind) ship 8-bit JPEGs.
    readers = dict.fromkeys((".npy", ".png", ".jpg", ".jpeg"), read_thermal)
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "trunk": {"width": 768, "depth": 12, "heads": 12, "drop_path": 0.0},
        "head": {"pool": "cls"},
        "logit_scale": {"init": 10.0, "learnable": False},
    }
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "tiny": {"input": {"size": 64, "patch_size": 16}, "trunk": {"width": 128, "depth": 2, "heads": 4}},
        "small": {"input": {"size": 112, "patch_size": 16}, "trunk": {"width": 384, "depth": 6, "heads": 6}},
        "huge": {"trunk": {"kv_bias": True}},  # ImageBind's learned key/value bias in every attention
    }

    def transform(self, raw, cfg: ThermalInput) -> Tensor:
        """float ``(H, W)`` in [0, 1] (or uint8) -> standardised ``(1, S, S)``."""
        return self._standardize(resize_center_crop(to_chw_float(raw, 1), cfg.size, mode="bilinear"), cfg)

    def transform_batch(self, raws, cfg: ThermalInput) -> Tensor:
        if isinstance(raws, Tensor) and raws.ndim == 3:
            return self._standardize(resize_center_crop(raws[:, None].float(), cfg.size, mode="bilinear"), cfg)
        return super().transform_batch(raws, cfg)

    @staticmethod
    def _standardize(x: Tensor, cfg: ThermalInput) -> Tensor:
        """``(x - mean) / std`` in one new tensor (``x`` may be the caller's: it is left as it is)."""
        out = x - cfg.mean
        out /= cfg.std
        return out

    def build_preprocessor(self, cfg: ThermalInput, width: int) -> nn.Module:
        return PatchTokenizer(cfg.channels, (cfg.size, cfg.size), width, cfg.patch_size, norm=True)

    def dummy_input(self, cfg: ThermalInput, batch_size: int, generator: torch.Generator) -> Tensor:
        return dummy_image(batch_size, cfg.channels, cfg.size, generator)
