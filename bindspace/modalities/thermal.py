"""Thermal images: 1-channel ViT (ImageBind: 768 wide, 12 blocks, 12 heads, patch 16, logit scale 10).

Readers return relative intensity in [0, 1] (8- or 16-bit PNG, or an already-normalised .npy);
it is standardised with ``mean``/``std``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bindspace.modalities._image_ops import dummy_image, resize_center_crop, to_chw_float
from bindspace.modalities.base import ModalitySpec, register_modality
from bindspace.nn.layers import PatchTokenizer


@dataclass
class ThermalInput:
    size: int = 224
    patch_size: int = 16
    mean: float = 0.5
    std: float = 0.5
    channels: int = 1

    @property
    def ndim(self) -> int:
        return 3


@register_modality
class ThermalSpec(ModalitySpec):
    name = "thermal"
    input_config = ThermalInput
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "trunk": {"width": 768, "depth": 12, "heads": 12, "drop_path": 0.0},
        "head": {"pool": "cls"},
        "logit_scale": {"init": 10.0, "learnable": False},
    }

    def transform(self, raw, cfg: ThermalInput) -> Tensor:
        """float ``(H, W)`` in [0, 1] (or uint8) -> standardised ``(1, S, S)``."""
        x = resize_center_crop(to_chw_float(raw, 1), cfg.size, mode="bilinear")
        return (x - cfg.mean) / cfg.std

    def transform_batch(self, raws, cfg: ThermalInput) -> Tensor:
        if isinstance(raws, Tensor) and raws.ndim == 3:
            x = resize_center_crop(raws[:, None].float(), cfg.size, mode="bilinear")
            return (x - cfg.mean) / cfg.std
        return super().transform_batch(raws, cfg)

    def build_preprocessor(self, cfg: ThermalInput, width: int) -> nn.Module:
        return PatchTokenizer(cfg.channels, (cfg.size, cfg.size), width, cfg.patch_size, norm=True)

    def dummy_input(self, cfg: ThermalInput, batch_size: int, generator: torch.Generator) -> Tensor:
        return dummy_image(batch_size, cfg.channels, cfg.size, generator)
