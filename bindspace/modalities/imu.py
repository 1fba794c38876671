"""IMU: 6 axes (accelerometer xyz, gyroscope xyz) over time.

ImageBind: ``(6, 2000)`` (Ego4D, 10 s at 200 Hz), tokens of 8 consecutive steps (48 numbers ->
Linear -> 512), 6 blocks of width 512 with 8 heads and drop path 0.7, dropout 0.5 before the
head's projection, logit scale 5. Signals are divided by fixed per-sensor scales (not per-sample
z-scored) so that the amplitude of the motion, which carries information such as speed, survives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bindspace.modalities.base import ModalitySpec, register_modality
from bindspace.nn.layers import SequencePatchTokenizer


@dataclass
class IMUInput:
    length: int = 2000  # time steps after crop/resample
    patch: int = 8
    accel_scale: float = 9.81  # m/s^2 -> units of g
    gyro_scale: float = math.pi  # rad/s -> half turns per second
    channels: int = 6

    @property
    def ndim(self) -> int:
        return 2


def fit_length(x: Tensor, length: int) -> Tensor:
    """Centre-crop a longer ``(..., C, T)`` signal; linearly resample a shorter one up to ``length``."""
    t = x.shape[-1]
    if t > length:
        start = (t - length) // 2
        return x[..., start : start + length]
    if t < length:
        flat = x.reshape(-1, x.shape[-2], t)
        return F.interpolate(flat, size=length, mode="linear", align_corners=True).reshape(*x.shape[:-1], length)
    return x


@register_modality
class IMUSpec(ModalitySpec):
    name = "imu"
    input_config = IMUInput
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "trunk": {"width": 512, "depth": 6, "heads": 8, "drop_path": 0.7},
        "head": {"pool": "cls", "dropout": 0.5},
        "logit_scale": {"init": 5.0, "learnable": False},
    }

    def transform(self, raw, cfg: IMUInput) -> Tensor:
        """float ``(6, T)`` -> scaled ``(6, length)``."""
        return self.transform_batch(torch.as_tensor(np.asarray(raw))[None], cfg)[0]

    def transform_batch(self, raws, cfg: IMUInput) -> Tensor:
        x = torch.as_tensor(np.asarray(raws)) if not isinstance(raws, Tensor) else raws
        if x.ndim != 3 or x.shape[1] != cfg.channels:
            raise ValueError(f"IMU batch must be (B, {cfg.channels}, T), got {tuple(x.shape)}")
        x = fit_length(x.float(), cfg.length)
        scale = torch.tensor([cfg.accel_scale] * 3 + [cfg.gyro_scale] * 3).view(1, 6, 1)
        return x / scale

    def build_preprocessor(self, cfg: IMUInput, width: int) -> nn.Module:
        return SequencePatchTokenizer(cfg.channels, cfg.length, width, cfg.patch, norm=True)

    def dummy_input(self, cfg: IMUInput, batch_size: int, generator: torch.Generator) -> Tensor:
        return torch.randn(batch_size, cfg.channels, cfg.length, generator=generator)
