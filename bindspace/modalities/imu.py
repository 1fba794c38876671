"""IMU: 6 axes (accelerometer xyz, gyroscope xyz) over time.

ImageBind: ``(6, 2000)`` (Ego4D, 10 s at 200 Hz), tokens of 8 consecutive steps (48 numbers ->
Linear -> 512), 6 blocks of width 512 with 8 heads and drop path 0.7, dropout 0.5 before the
head's projection, logit scale 5. Signals are divided by fixed per-sensor scales (not per-sample
z-scored) so that the amplitude of the motion, which carries information such as speed, survives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bindspace.errors import DataFileError
from bindspace.modalities.base import ModalitySpec, register_modality
from bindspace.modalities.files import PathLike, checked_file, load_csv, load_npy, to_float32
from bindspace.nn.layers import SequencePatchTokenizer

IMU_CHANNELS = 6


@dataclass
class IMUInput:
    length: int = 2000  # time steps after crop/resample
    patch: int = 8
    accel_scale: float = 9.81  # m/s^2 -> units of g
    gyro_scale: float = math.pi  # rad/s -> half turns per second
    channels: int = 6


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


@lru_cache(maxsize=16)
def _sensor_scale(accel_scale: float, gyro_scale: float) -> Tensor:
    """The per-axis divisors ``(1, 6, 1)`` float32, built once per config."""
    return torch.tensor([accel_scale] * 3 + [gyro_scale] * 3).view(1, 6, 1)


def read_imu(path: PathLike) -> np.ndarray:
    """Read six-axis IMU samples (accelerometer xyz, gyroscope xyz).

    Args:
        path: .npy or .csv holding (T, 6) or (6, T) numbers; (6, 6) is read as (T, 6). A CSV may
            start with one header row of column names.

    Returns:
        float32 array (6, T), T >= 1.

    Raises:
        DataFileError: Unreadable file, non-numeric values, any other shape, or NaN/Inf.
    """
    path = checked_file(path)
    array = load_npy(path) if path.suffix.lower() == ".npy" else load_csv(path)
    if array.dtype.kind not in "iuf":
        raise DataFileError(path, f"IMU values must be real numbers, got dtype {array.dtype}")
    if array.ndim == 2 and array.shape[1] == IMU_CHANNELS:  # (T, 6), checked first so (6, 6) lands here
        array = array.T
    elif not (array.ndim == 2 and array.shape[0] == IMU_CHANNELS):
        raise DataFileError(path, f"IMU must be shaped (T, 6) or (6, T), got {array.shape}")
    if array.shape[1] == 0:
        raise DataFileError(path, "IMU has no samples (T = 0)")
    return to_float32(path, array, "IMU")


@register_modality
class IMUSpec(ModalitySpec):
    name = "imu"
    input_config = IMUInput
    readers = dict.fromkeys((".npy", ".csv"), read_imu)
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "trunk": {"width": 512, "depth": 6, "heads": 8, "drop_path": 0.7},
        "head": {"pool": "cls", "dropout": 0.5},
        "logit_scale": {"init": 5.0, "learnable": False},
    }
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "tiny": {
            "input": {"length": 200, "patch": 10},
            "trunk": {"width": 128, "depth": 2, "heads": 4, "drop_path": 0.1},
            "head": {"dropout": 0.1},
        },
        "small": {
            "input": {"length": 200, "patch": 10},
            "trunk": {"width": 384, "depth": 6, "heads": 6, "drop_path": 0.0},
            "head": {"dropout": 0.0},
        },
        "huge": {"trunk": {"kv_bias": True}},  # ImageBind's learned key/value bias in every attention
    }

    def transform(self, raw, cfg: IMUInput) -> Tensor:
        """float ``(6, T)`` -> scaled ``(6, length)``."""
        return self.transform_batch(torch.as_tensor(np.asarray(raw))[None], cfg)[0]

    def transform_batch(self, raws, cfg: IMUInput) -> Tensor:
        x = torch.as_tensor(np.asarray(raws)) if not isinstance(raws, Tensor) else raws
        if x.ndim != 3 or x.shape[1] != cfg.channels:
            raise ValueError(f"IMU batch must be (B, {cfg.channels}, T), got {tuple(x.shape)}")
        return fit_length(x.float(), cfg.length) / _sensor_scale(cfg.accel_scale, cfg.gyro_scale)

    def build_preprocessor(self, cfg: IMUInput, width: int) -> nn.Module:
        return SequencePatchTokenizer(cfg.channels, cfg.length, width, cfg.patch, norm=True)

    def dummy_input(self, cfg: IMUInput, batch_size: int, generator: torch.Generator) -> Tensor:
        return torch.randn(batch_size, cfg.channels, cfg.length, generator=generator)
